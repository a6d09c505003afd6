"""Download or verify the model files the configured profile needs, before the services start.

start.sh runs this once per start. Each model setting (LLM, text-to-image, TRELLIS, safety classifiers) is a hub
id, a local folder, a `builtin:` name or empty; only hub ids are fetched, with `huggingface_hub.snapshot_download`
into HF_HOME. TRELLIS also needs DINOv2 from `torch.hub`, kept in TORCH_HOME. When the hub cannot be reached (or
HF_HUB_OFFLINE=1) nothing is downloaded: the cache is checked instead and the report says plainly which part of
the appliance will not become ready. It never stops the start: a service whose model is missing stays live but
not ready and says why in `/v1/health/ready`.

    python scripts/fetch_models.py          # fetch or verify, then print a report
    python scripts/fetch_models.py --plan   # only list what the settings need, no network
    python scripts/fetch_models.py --strict # exit 1 when anything needed is missing
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from config import Settings, get_settings

DINOV2_REPO = "facebookresearch/dinov2"
DINOV2_MODEL = "dinov2_vitl14_reg"
DINOV2_CHECKPOINT = "dinov2_vitl14_reg4_pretrain.pth"
U2NET_MODEL = "u2net"
U2NET_FILE = "u2net.onnx"
# Weight formats we never load: skipping them keeps downloads to what transformers/diffusers/TRELLIS read.
IGNORE_PATTERNS = [
    "original/*",
    "*.pth",
    "*.onnx",
    "onnx/*",
    "*.msgpack",
    "*.h5",
    "tf_model*",
    "flax_model*",
    "*.ot",
    "rust_model*",
    "coreml/*",
    "openvino/*",
    "*.tflite",
]


@dataclass(frozen=True)
class Need:
    """One model the settings ask for, and what stops working without it."""

    setting: str
    model_id: str
    affects: str

    @property
    def kind(self) -> str:
        return classify(self.model_id)


def classify(model_id: str) -> str:
    """`off` (empty), `builtin`, `local` (an existing path), `missing-local` (a path that is not there) or `hub`."""
    if not model_id.strip():
        return "off"
    if model_id.startswith("builtin:"):
        return "builtin"
    path = Path(model_id).expanduser()
    if path.exists():
        return "local"
    if model_id.startswith(("/", "./", "../", "~")) or model_id.endswith(".gguf"):
        return "missing-local"
    return "hub"


def needs(s: Settings) -> list[Need]:
    """Every model the active settings use, in start order."""
    safety = (
        "the 3D service will not be ready (SAFETY_FAIL_CLOSED)"
        if s.safety_fail_closed
        else "that safety check is skipped with a warning (SAFETY_FAIL_CLOSED=false)"
    )
    llm = (
        f"the LLM service falls back to {s.llm_fallback_model} (LLM_FALLBACK_MODEL)"
        if s.llm_fallback_model
        else "the LLM service will not be ready"
    )
    out = [
        Need("LLM_MODEL", str(s.llm_model), llm),
        Need(
            "IMAGEGEN_MODEL",
            str(s.imagegen_model or ""),
            "text-to-image will be off (the UI still takes uploaded images)",
        ),
    ]
    if s.backend_3d == "trellis":
        out.append(Need("TRELLIS_IMAGE_MODEL", s.trellis_image_model, "the 3D service will not be ready"))
        if s.trellis_text_model:
            out.append(Need("TRELLIS_TEXT_MODEL", s.trellis_text_model, "text-to-3D will not be ready"))
    out += [
        Need("SAFETY_PROMPT_MODEL", str(s.safety_prompt_model or ""), safety),
        Need("SAFETY_IMAGE_MODEL", str(s.safety_image_model or ""), safety),
    ]
    return out


def hub_online(timeout_s: float = 5.0) -> bool:
    """True when the Hugging Face endpoint answers at all (any HTTP status) and offline mode is off."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout_s)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def fetch_hub(need: Need, s: Settings, online: bool) -> tuple[bool, str]:
    """Download (online) or find in the cache (offline) one hub repository; (ok, what happened)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    allow = [s.llm_gguf_file, "*.json", "tokenizer*"] if need.setting == "LLM_MODEL" and s.llm_gguf_file else None
    try:
        path = snapshot_download(
            need.model_id,
            token=s.token,
            allow_patterns=allow,
            ignore_patterns=None if allow else IGNORE_PATTERNS,
            local_files_only=not online,
        )
    except GatedRepoError:
        return False, (
            "gated: accept its licence on huggingface.co and set HF_TOKEN in .env"
            if s.token
            else "gated and HF_TOKEN is empty: set HF_TOKEN in .env (a read token)"
        )
    except RepositoryNotFoundError:
        return False, "not found on the hub (check the id; private repositories need HF_TOKEN)"
    except LocalEntryNotFoundError:
        return False, "not in the cache and the hub cannot be reached"
    except (HfHubHTTPError, OSError, ValueError) as err:
        return False, f"download failed ({type(err).__name__}: {str(err)[:200]}); the next start resumes it"
    return True, f"{'verified' if online else 'found in cache'} at {path}"


def fetch_dinov2(online: bool) -> tuple[bool, str]:
    """DINOv2 for the TRELLIS image pipeline: the hub repo and checkpoint in TORCH_HOME's hub folder."""
    import torch

    hub = Path(torch.hub.get_dir())
    repo, ckpt = hub / "facebookresearch_dinov2_main", hub / "checkpoints" / DINOV2_CHECKPOINT
    if repo.is_dir() and ckpt.is_file():
        return True, f"found in {hub}"
    if not online:
        return False, f"not in {hub} and the network is off"
    try:
        torch.hub.load(DINOV2_REPO, DINOV2_MODEL, pretrained=True, trust_repo=True)
    except Exception as err:  # torch.hub raises many kinds; report any of them plainly
        return False, f"download failed ({type(err).__name__}: {str(err)[:200]})"
    return True, f"downloaded to {hub}"


def fetch_u2net(online: bool) -> tuple[bool, str]:
    """rembg's u2net.onnx, which TRELLIS uses to cut out RGB images (SANA's output, uploads without alpha)."""
    home = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net"))
    if (home / U2NET_FILE).is_file():
        return True, f"found in {home}"
    if not online:
        return False, f"not in {home} and the network is off"
    try:
        from rembg import new_session

        new_session(U2NET_MODEL)
    except Exception as err:  # rembg surfaces network and file errors of many kinds; report any of them plainly
        return False, f"download failed ({type(err).__name__}: {str(err)[:200]})"
    return True, f"downloaded to {home}"


def run(s: Settings, plan_only: bool = False) -> list[tuple[str, bool, str]]:
    """Fetch or verify each need; returns (label, ok, message) rows."""
    items = needs(s)
    hub_items = [n for n in items if n.kind == "hub"]
    trellis = s.backend_3d == "trellis"
    online = False if plan_only else (bool(hub_items) or trellis) and hub_online()
    if not plan_only and (hub_items or trellis) and not online:
        print(
            "fetch_models: the Hugging Face hub cannot be reached (offline or HF_HUB_OFFLINE=1); "
            "checking the local cache only.",
            flush=True,
        )
    rows = []
    for n in items:
        label = f"{n.setting}={n.model_id or '(empty)'}"
        if n.kind == "off":
            rows.append((label, True, "off"))
        elif n.kind in ("builtin", "local"):
            rows.append((label, True, f"{n.kind}, nothing to download"))
        elif n.kind == "missing-local":
            rows.append((label, False, f"local path does not exist -> {n.affects}"))
        elif plan_only:
            rows.append((label, True, "hub id, would be fetched"))
        else:
            print(f"fetch_models: {label}: {'downloading/verifying' if online else 'checking cache'} ...", flush=True)
            ok, msg = fetch_hub(n, s, online)
            rows.append((label, ok, msg if ok else f"{msg} -> {n.affects}"))
    if trellis:
        # (label, where it goes, fetcher, what fails without it): TRELLIS's own downloads outside the HF hub.
        extras = [
            (f"DINOv2 ({DINOV2_MODEL}, torch.hub)", "TORCH_HOME", fetch_dinov2, "the 3D service will not be ready"),
            (
                f"rembg {U2NET_MODEL} (U2NET_HOME)",
                "U2NET_HOME",
                fetch_u2net,
                "images without transparency cannot be cut out for 3D",
            ),
        ]
        for label, home, fetch, affects in extras:
            if plan_only:
                rows.append((label, True, f"would be fetched into {home}"))
            else:
                ok, msg = fetch(online)
                rows.append((label, ok, msg if ok else f"{msg} -> {affects}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="list what the settings need; no network")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a needed model is missing")
    args = parser.parse_args(argv)
    s = get_settings()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    rows = run(s, plan_only=args.plan)
    for label, ok, msg in rows:
        print(f"fetch_models: {'ok     ' if ok else 'MISSING'} {label}: {msg}", flush=True)
    missing = [label for label, ok, _ in rows if not ok]
    if missing:
        print(f"fetch_models: {len(missing)} model(s) missing; the programs start anyway and report it.", flush=True)
    return 1 if (missing and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
