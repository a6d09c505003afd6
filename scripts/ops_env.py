"""Print the resolved settings that the shell side of the appliance needs, as `export` lines.

start.sh and install.sh run `eval "$(python scripts/ops_env.py)"`, so the paths supervisord.conf expands
(`%(ENV_LOG_DIR)s`, `%(ENV_RUN_DIR)s`), the ports the scripts check and the library variables read straight
from the process environment (HF_HOME, TORCH_HOME, CUDA_VISIBLE_DEVICES, HF_HUB_OFFLINE,
PYTORCH_CUDA_ALLOC_CONF) come from the one source of truth, `config.py`, including values set only in `.env`.
Invalid settings exit 2 with config.py's readable message.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from config import get_settings

# Settings exported to the environment: always (the ports the scripts check, the paths they and
# supervisord.conf use) ...
PORTS = ("llm_port", "trellis_port", "gradio_server_port", "published_port")
PATHS = ("data_dir", "log_dir", "cache_dir", "run_dir")
# Library variables read from the process environment, exported as set (their defaults are ours).
LIBRARY = ("pytorch_cuda_alloc_conf",)
# ... and only when set, so a library keeps its own default otherwise.
WHEN_SET = ("hf_home", "torch_home", "cuda_visible_devices")


def exports() -> dict[str, str]:
    s = get_settings()
    out = {"CHAT3D_PROFILE": s.profile}
    out.update({name.upper(): str(getattr(s, name)) for name in PORTS})
    out.update({name.upper(): str(Path(getattr(s, name)).resolve()) for name in PATHS})
    out.update({name.upper(): str(getattr(s, name)) for name in LIBRARY})
    for name in WHEN_SET:
        value = getattr(s, name)
        if value not in (None, ""):
            out[name.upper()] = str(Path(value).resolve()) if isinstance(value, Path) else str(value)
    if s.hf_hub_offline:
        out["HF_HUB_OFFLINE"] = "1"
    out["FETCH_MODELS"] = "1" if s.fetch_models else "0"
    return out


ALWAYS_EXPORTED = ("CHAT3D_PROFILE", *(n.upper() for n in PORTS), *(n.upper() for n in PATHS), "FETCH_MODELS")


def main() -> None:
    for name, value in exports().items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
