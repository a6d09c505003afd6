"""Static checks of the packaging: linters, compose validation, generated files, and that the Dockerfile, the
compose file, supervisord.conf, the scripts and config.py agree on ports, paths and names."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config
from scripts import healthcheck, ops_env
from tests.ops.conftest import PROGRAMS, ROOT, SHELL_SCRIPTS, clean_env, compose_binary, repo_files, tool

DOCKERFILE = (ROOT / "Dockerfile").read_text()
SUPERVISORD_CONF = (ROOT / "supervisord.conf").read_text()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(stage: str = "runtime") -> dict[str, str]:
    """The ENV values of one build stage."""
    env: dict[str, str] = {}
    current = ""
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        elif word == "ENV" and current == stage:
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", DOCKERFILE, flags=re.M))


def run_compose_config(
    *args: str, files: tuple[str, ...] = ("docker-compose.yml",)
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` on our compose file(s) (the compose binary alone validates them; no engine needed)."""
    return subprocess.run(
        [compose_binary(), *(a for f in files for a in ("-f", str(ROOT / f))), "config", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=60,
    )


def compose_config() -> dict:
    out = run_compose_config("--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --- linters -----------------------------------------------------------------------------------------------------


def test_hadolint_passes_on_dockerfile() -> None:
    out = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_ignores_are_justified() -> None:
    text = (ROOT / ".hadolint.yaml").read_text()
    for rule in re.findall(r"^\s*-\s*(DL\d+|SC\d+)", text, flags=re.M):
        assert re.search(rf"#\s*{rule}\b.+", text), f"{rule} is ignored without a comment saying why"


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shellcheck_passes(script: str) -> None:
    path = ROOT / script
    assert path.is_file(), f"{script} is missing"
    out = subprocess.run([tool("shellcheck"), "-x", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_shell_script_is_linted() -> None:
    shebangs = (b"#!/usr/bin/env bash", b"#!/bin/bash", b"#!/bin/sh", b"#!/usr/bin/env sh")
    found = {f for f in repo_files() if f.endswith(".sh") or (ROOT / f).read_bytes()[:30].startswith(shebangs)}
    assert found <= set(SHELL_SCRIPTS), f"add these to SHELL_SCRIPTS: {sorted(found - set(SHELL_SCRIPTS))}"


def test_compose_file_is_valid_for_compose_v2() -> None:
    out = run_compose_config("-q")
    assert out.returncode == 0, out.stderr


# --- generated files -----------------------------------------------------------------------------------------------


def test_env_example_matches_config() -> None:
    assert (ROOT / ".env.example").read_text() == config.render_env_example(), (
        ".env.example is stale: run `python config.py --env-example > .env.example`"
    )


def test_env_example_holds_no_secret_and_documents_user_settings() -> None:
    text = (ROOT / ".env.example").read_text()
    assert re.search(r"^HF_TOKEN=$", text, flags=re.M), "HF_TOKEN must be present and empty"
    for name in (
        "CHAT3D_PROFILE",
        "GRADIO_SERVER_PORT",
        "CUDA_VISIBLE_DEVICES",
        "UI_AUTH_USER",
        "UI_AUTH_PASSWORD",
        "DATA_DIR",
        "PUBLISHED_PORT",
        "API_KEY",
    ):
        assert re.search(rf"^# {name}=", text, flags=re.M), f"{name} is not documented"
    for line in text.splitlines():
        assert line.startswith("#") or line == "" or line == "HF_TOKEN=", f"uncommented setting: {line}"


# --- the Dockerfile ------------------------------------------------------------------------------------------------


def test_every_file_the_dockerfile_copies_exists() -> None:
    sources = []
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from=" not in rest:
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources, "no COPY found"
    missing = [s for s in sources if not ((ROOT / s).exists() or any(ROOT.glob(s)))]
    assert not missing, f"the Dockerfile copies files that do not exist: {missing}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


def test_dockerfile_runs_start_sh_as_non_root_with_healthcheck() -> None:
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert words.count("FROM") >= 2
    user = [rest for w, rest in instructions if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert [rest for w, rest in instructions if w == "CMD"][-1] == '["/app/start.sh"]'
    assert any(w == "HEALTHCHECK" and "scripts/healthcheck.py" in rest for w, rest in instructions)
    assert "TORCH_CUDA_ARCH_LIST" in dockerfile_args()
    assert "BAKE_MODELS" in dockerfile_args()


def test_pins_agree_between_requirements_and_dockerfile() -> None:
    args = dockerfile_args()
    cpu_torch = re.search(r"^torch==([\w.]+)$", (ROOT / "requirements.txt").read_text(), flags=re.M)
    gpu_text = (ROOT / "requirements-gpu.txt").read_text()
    gpu_torch = re.search(r"^torch==([\w.]+)\+(cu12\d)$", gpu_text, flags=re.M)
    assert cpu_torch and gpu_torch, "torch must be pinned in requirements.txt and requirements-gpu.txt"
    assert gpu_torch.group(1) == cpu_torch.group(1) == args["TORCH_VERSION"]
    assert gpu_torch.group(2) == args["TORCH_CUDA"]
    assert f"download.pytorch.org/whl/{args['TORCH_CUDA']}" in gpu_text
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:12.")
    assert args["TRELLIS_REF"] == "6b0d647"
    assert "EasternJournalist/utils3d.git@9a4eb15" in gpu_text


# Where the image gets each module an optional TRELLIS feature needs (nim_trellis/backends/optional_deps.py).
FEATURE_MODULE_SOURCES = {
    "nvdiffrast.torch": "Dockerfile",
    "diff_gaussian_rasterization": "Dockerfile",
    "xatlas": "xatlas",
    "pymeshfix": "pymeshfix",
    "igraph": "igraph",
    "cv2": "opencv-python-headless",
    "rembg": "rembg",
}


def test_gpu_image_installs_every_optional_trellis_part_and_no_foreign_attention_build() -> None:
    from nim_trellis.backends.optional_deps import FEATURE_MODULES

    gpu_text = (ROOT / "requirements-gpu.txt").read_text()
    packages = {
        re.split(r"[=<>@ \[]", line, maxsplit=1)[0].lower() for line in gpu_text.splitlines() if line[:1].isalpha()
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    for feature, modules in FEATURE_MODULES.items():
        for module in modules:
            source = FEATURE_MODULE_SOURCES[module]
            assert (source == "Dockerfile" and module.split(".")[0].replace("_", "-") in dockerfile) or (
                source in packages
            ), f"{feature} needs {module}"
    # xformers / flash-attn wheels load only with the torch they were built for; TRELLIS uses PyTorch's kernels.
    assert not {"xformers", "flash-attn", "flash_attn"} & packages
    vision = re.search(r"^torchvision==([\w.]+)\+(cu12\d)$", gpu_text, flags=re.M)
    assert vision and vision.group(1) == dockerfile_args()["TORCHVISION_VERSION"]


def test_ports_and_paths_agree_across_config_dockerfile_compose() -> None:
    env = dockerfile_env()
    fields = config.Settings.model_fields
    for name in ("llm_port", "trellis_port", "gradio_server_port"):
        assert env[name.upper()] == str(fields[name].default), name
    exposed = [rest for w, rest in dockerfile_instructions() if w == "EXPOSE"]
    assert exposed == [env["GRADIO_SERVER_PORT"]], "expose exactly the UI port"
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0", "the UI must listen outside the container's loopback"
    assert env["LLM_HOST"] == env["TRELLIS_HOST"] == "127.0.0.1", "model services stay internal"

    service = compose_config()["services"]["chat-to-3d"]
    ports = service["ports"]
    assert len(ports) == 1 and str(ports[0]["target"]) == env["GRADIO_SERVER_PORT"]
    assert str(ports[0]["published"]) == str(fields["published_port"].default)
    cenv = service["environment"]
    # This machine only unless the user opts in, and the studio knows where it is published (it needs a login
    # beyond loopback).
    assert ports[0]["host_ip"] == cenv["UI_PUBLISH_ADDRESS"] == "127.0.0.1"
    assert cenv["GRADIO_SERVER_PORT"] == env["GRADIO_SERVER_PORT"]
    for name in ("DATA_DIR", "LOG_DIR", "HF_HOME", "TORCH_HOME", "RUN_DIR", "CACHE_DIR"):
        assert cenv[name] == env[name], name

    mounts = {v["source"]: v["target"] for v in service["volumes"]}
    assert mounts == {
        "data": env["DATA_DIR"],
        "hf-cache": env["HF_HOME"],
        "torch-cache": env["TORCH_HOME"],
        "logs": env["LOG_DIR"],
    }
    assert set(compose_config()["volumes"]) == set(mounts), "declare exactly the volumes that are used"
    mkdir = next(rest for w, rest in dockerfile_instructions() if w == "RUN" and "useradd" in rest)
    for target in mounts.values():
        assert target in mkdir, f"{target} must exist in the image, owned by the app user"
    assert env["CACHE_DIR"].startswith(env["DATA_DIR"] + "/")


def test_the_several_gpus_override_shares_one_redis_queue_and_the_data() -> None:
    out = run_compose_config("--format", "json", files=("docker-compose.yml", "docker-compose.gpus.yml"))
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    queue = services["chat-to-3d"]["environment"]["JOB_QUEUE_URL"]
    assert queue.startswith("redis://redis:") and "redis" in services
    workers = {name: s for name, s in services.items() if name.startswith("trellis-worker-")}
    assert len(workers) >= 2
    gpus = []
    for name, worker in workers.items():
        assert worker["environment"]["JOB_QUEUE_URL"] == queue, name
        assert worker["command"][1:3] == ["-m", "nim_trellis.worker"], name
        assert importlib.util.find_spec(worker["command"][2]) is not None
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        gpus += device["device_ids"]
        data = {v["target"]: v["source"] for v in worker["volumes"]}
        assert data["/data"] == "data", name  # the main service's volume: inputs and results are shared files
    assert len(set(gpus)) == len(gpus) and "0" not in gpus  # one GPU each; GPU 0 keeps the LLM


def test_compose_service_has_gpu_restart_shm_and_same_healthcheck() -> None:
    service = compose_config()["services"]["chat-to-3d"]
    assert service["restart"] == "unless-stopped"
    assert int(service["shm_size"]) >= 1 << 30
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["chat-to-3d"]
    assert [e["path"] for e in raw["env_file"]] == [".env"], "settings come from .env"
    health = next(rest for w, rest in dockerfile_instructions() if w == "HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1]) == service["healthcheck"]["test"][1:]


# --- supervisord.conf and the scripts ------------------------------------------------------------------------------


def parsed_supervisord_conf(log_dir: Path) -> dict:
    """Let supervisor itself parse the file (as supervisord would) and report each program's options."""
    code = """
import json, sys
from supervisor.options import ServerOptions
o = ServerOptions()
o.realize(args=["-c", sys.argv[1]])
out = {}
for group in o.process_group_configs:
    for p in group.process_configs:
        out[p.name] = {k: getattr(p, k) for k in ("command", "priority", "autorestart", "startsecs", "startretries",
            "stopasgroup", "killasgroup", "stdout_logfile", "stderr_logfile", "stdout_logfile_maxbytes",
            "stderr_logfile_maxbytes", "stdout_logfile_backups", "stderr_logfile_backups", "directory")}
        out[p.name]["autorestart"] = str(out[p.name]["autorestart"])
from supervisor.options import ClientOptions
c = ClientOptions()
c.realize(args=["-c", sys.argv[1]])
print(json.dumps({"programs": out, "serverurl": c.serverurl, "socket": o.server_configs[0]["file"]}))
"""
    log_dir.mkdir(exist_ok=True)
    env = clean_env(CHAT3D_PYTHON="/venv/bin/python", LOG_DIR=str(log_dir), RUN_DIR=str(log_dir))
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "supervisord.conf")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_supervisord_conf_defines_the_three_programs_as_designed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    parsed = parsed_supervisord_conf(logs)
    programs = parsed["programs"]
    assert set(programs) == {*PROGRAMS, "log-stream"}
    assert [programs[p]["priority"] for p in PROGRAMS] == [1, 2, 3]
    entries = {  # the installed package's modules (pip install -e .), and the UI's script
        "llm-service": (["-m", "nim_llm.run_llama_local"], "nim_llm/run_llama_local.py"),
        "trellis-service": (["-m", "nim_trellis.run_trellis_local"], "nim_trellis/run_trellis_local.py"),
        "gradio-app": (["app.py"], "app.py"),
    }
    for name, (args, source) in entries.items():
        p = programs[name]
        assert shlex.split(p["command"]) == ["/venv/bin/python", *args], "run the venv's python directly"
        assert (ROOT / source).is_file(), source
        assert p["directory"] == str(ROOT)
        assert p["autorestart"] != "False" and p["startsecs"] >= 1 and p["startretries"] >= 1
        assert p["stopasgroup"] and p["killasgroup"]
        assert p["stdout_logfile"] == f"{logs}/{name}.out.log" and p["stderr_logfile"] == f"{logs}/{name}.err.log"
        assert p["stdout_logfile_maxbytes"] > 0 and p["stdout_logfile_backups"] > 0
        assert p["stderr_logfile_maxbytes"] > 0 and p["stderr_logfile_backups"] > 0
    assert parsed["serverurl"] == f"unix://{logs}/supervisor.sock" and parsed["socket"] == f"{logs}/supervisor.sock"
    stream = programs["log-stream"]["command"]
    assert all(f"{logs}/{name}.{kind}.log" in stream for name in PROGRAMS for kind in ("out", "err"))


def test_supervisord_conf_uses_only_variables_that_start_sh_and_the_image_provide() -> None:
    used = set(re.findall(r"%\(ENV_(\w+)\)s", SUPERVISORD_CONF))
    provided_by_start = set(ops_env.ALWAYS_EXPORTED) | {"CHAT3D_PYTHON"}
    assert used <= provided_by_start, f"start.sh does not export {used - provided_by_start}"
    assert used <= set(dockerfile_env()), f"the image does not set {used - set(dockerfile_env())}"


def test_program_names_agree_between_conf_healthcheck_and_start_sh() -> None:
    assert list(healthcheck.endpoints(config.Settings(_env_file=None))) == PROGRAMS  # type: ignore[call-arg]
    start = (ROOT / "start.sh").read_text()
    assert "for name in " + " ".join(PROGRAMS) in start
