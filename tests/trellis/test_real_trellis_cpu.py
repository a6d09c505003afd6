"""The real upstream TRELLIS (third_party/) on the CPU: random-weight models built from upstream's own classes and
configs, loaded and run by upstream's own pipeline. Tiny sizes run here; the full-size configs are checked on the
`meta` device (their weights are about 3 GB)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh

from config import Settings
from nim_trellis.backends.trellis import hub_cache_first, prepare_rgba
from tests.trellis.conftest import disc_image, encode, running
from tests.trellis.real_trellis import TinyTrellis, cpu_trellis

pytestmark = pytest.mark.slow

STEPS = {
    "sparse_structure_sampler_params": {"steps": 2, "cfg_strength": 7.5},
    "slat_sampler_params": {"steps": 2, "cfg_strength": 3.0},
}
FLOW_PARAMS_M = {"sparse_structure_flow_model": 555, "slat_flow_model": 600}  # microsoft/TRELLIS-image-large's


@pytest.fixture(scope="module")
def tiny_trellis(model_cache: Path) -> Iterator[TinyTrellis]:
    with cpu_trellis(model_cache / "real-trellis") as tiny:
        yield tiny


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1; huggingface_hub read it when it was imported, so its constant is set as well."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pipeline_run_gives_mesh_and_gaussians_on_cpu(tiny_trellis: TinyTrellis, offline: None, tmp_path: Path) -> None:
    import torch
    from plyfile import PlyData
    from trellis.pipelines import TrellisImageTo3DPipeline

    started = time.monotonic()
    with hub_cache_first():  # as the service loads it: DINOv2 from the hub cache, GitHub never asked
        pipe = TrellisImageTo3DPipeline.from_pretrained(str(tiny_trellis.pipeline))
    loaded = time.monotonic()
    image = prepare_rgba(disc_image(256))
    assert (image.mode, image.size) == ("RGB", (518, 518))
    with torch.inference_mode():
        outputs = pipe.run(image, seed=1, formats=["mesh", "gaussian"], preprocess_image=False, **STEPS)
    print(f"load {loaded - started:.1f} s, run {time.monotonic() - loaded:.1f} s")

    mesh, gaussians = outputs["mesh"][0], outputs["gaussian"][0]
    assert mesh.success and mesh.vertices.shape[0] > 0 and mesh.faces.shape[0] > 0
    assert int(mesh.faces.max()) < mesh.vertices.shape[0] and bool(torch.isfinite(mesh.vertices).all())
    assert mesh.vertex_attrs.shape[0] == mesh.vertices.shape[0]
    xyz = gaussians.get_xyz
    assert xyz.shape[0] > 0 and bool(torch.isfinite(xyz).all())
    gaussians.save_ply(str(tmp_path / "gaussians.ply"))  # upstream's writer, through the vendored utils3d
    assert PlyData.read(str(tmp_path / "gaussians.ply"))["vertex"].count == xyz.shape[0]


def test_full_size_models_construct_from_upstream_configs(tiny_trellis: TinyTrellis) -> None:
    import torch

    from bench.random_trellis import (
        trellis_checkpoint_names,
        trellis_model,
        trellis_model_configs,
        trellis_pipeline_json,
    )

    specs = trellis_model_configs("full")
    with torch.device("meta"):
        models = {role: trellis_model(spec) for role, spec in specs.items()}
    params_m = {role: sum(p.numel() for p in m.parameters()) // 10**6 for role, m in models.items()}
    assert {role: params_m[role] for role in FLOW_PARAMS_M} == FLOW_PARAMS_M
    assert all(not spec["name"].startswith("Elastic") and spec["args"]["use_fp16"] for spec in specs.values())
    assert models["slat_decoder_mesh"].mesh_extractor.res == 256  # FlexiCubes at 4x the SLat's 64³
    pipeline = trellis_pipeline_json("full")["args"]
    assert pipeline["image_cond_model"] == "dinov2_vitl14_reg"
    assert pipeline["models"]["slat_decoder_mesh"] == "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16"
    assert set(pipeline["models"]) == set(trellis_checkpoint_names("full")) == set(specs)
    assert len(pipeline["slat_normalization"]["mean"]) == len(pipeline["slat_normalization"]["std"]) == 8


# --- our 3D service with the `trellis` backend over HTTP, on the real upstream code ----------------------------
@pytest.fixture(scope="module")
def trellis_url(
    tiny_trellis: TinyTrellis, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    import huggingface_hub.constants
    import torch.hub

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        # torch.hub asks GitHub for DINOv2's default branch unless the adapter loads it from the cache; where a
        # network drops packets that question hangs, so here it fails loudly instead.
        mp.setattr(torch.hub, "urlopen", no_github)
        settings = Settings(
            _env_file=None,
            profile="tiny",
            backend_3d="trellis",
            trellis_device="cpu",  # the only setting that differs from a GPU install: where the models run
            trellis_image_model=str(tiny_trellis.pipeline),
            imagegen_model="",
            data_dir=tmp_path_factory.mktemp("data"),
            cache_dir=model_cache,
            api_key=None,
        )
        with running(settings) as url:
            yield url


def no_github(*args: object, **kwargs: object) -> None:
    raise AssertionError("torch.hub asked GitHub; the hub cache should have answered")


def test_service_health_names_what_this_machine_cannot_make(trellis_url: str) -> None:
    body = httpx.get(f"{trellis_url}/v1/health/ready").json()
    assert body["status"] == "ready" and body["backends"]["3d"]["state"] == "ready"
    assert body["backends"]["texture"]["state"] == "off"  # CPU: no nvdiffrast, and the bake needs CUDA
    assert body["backends"]["background_removal"]["state"] == "off"  # rembg is not installed here


def test_infer_untextured_glb_and_stl_from_real_trellis(trellis_url: str) -> None:
    body = {"image": encode(disc_image(256)), "seed": 3, "no_texture": True}
    r = httpx.post(f"{trellis_url}/v1/infer", json=body, timeout=300)
    assert r.status_code == 200, r.text
    art = r.json()["artifacts"][0]
    assert (art["finishReason"], art["backend"], art["seed"]) == ("SUCCESS", "trellis", 3)
    glb = trimesh.load(io.BytesIO(base64.b64decode(art["base64"])), file_type="glb", force="mesh")
    assert 0 < len(glb.faces) <= Settings.model_fields["mesh_face_budget"].default
    assert glb.visual.kind == "vertex" and np.isfinite(glb.vertices).all()
    again = httpx.post(f"{trellis_url}/v1/infer", json=body, timeout=300).json()["artifacts"][0]
    assert again["base64"] == art["base64"]  # the same seed gives the same mesh

    stl = httpx.post(
        f"{trellis_url}/v1/infer", json={**body, "output_format": "stl"}, headers={"Accept": "model/stl"}, timeout=300
    )
    assert stl.status_code == 200 and stl.headers["content-type"] == "model/stl" and stl.headers["x-seed"] == "3"
    mesh = trimesh.load(io.BytesIO(stl.content), file_type="stl")
    assert len(mesh.faces) == len(glb.faces)


def test_job_reports_every_sampling_step_and_downloads(trellis_url: str) -> None:
    body = {"image": encode(disc_image(256)), "no_texture": True, "ss_sampling_steps": 20, "slat_sampling_steps": 20}
    job = httpx.post(f"{trellis_url}/v1/jobs", json=body).json()
    seen = []
    while (status := httpx.get(f"{trellis_url}/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
        seen.append((status["stage"], status["progress"]))
        time.sleep(0.02)
    assert status["status"] == "succeeded", status
    sampling = {p for stage, p in seen if stage in ("sampling_structure", "sampling_latent")}
    assert len(sampling) >= 5  # progress moves with the sampler's steps, not once per stage
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    result = httpx.get(f"{trellis_url}/v1/jobs/{job['id']}/result")
    assert result.headers["content-type"] == "model/gltf-binary"
    assert len(trimesh.load(io.BytesIO(result.content), file_type="glb", force="mesh").faces) > 0


def test_cancel_stops_sampling_within_a_step(trellis_url: str) -> None:
    body = {"image": encode(disc_image(256)), "no_texture": True, "ss_sampling_steps": 50, "slat_sampling_steps": 50}
    job = httpx.post(f"{trellis_url}/v1/jobs", json=body).json()
    while (status := httpx.get(f"{trellis_url}/v1/jobs/{job['id']}").json())["stage"] != "sampling_structure":
        assert status["status"] in ("queued", "running"), status
        time.sleep(0.02)
    httpx.delete(f"{trellis_url}/v1/jobs/{job['id']}")
    while (status := httpx.get(f"{trellis_url}/v1/jobs/{job['id']}").json())["status"] == "running":
        time.sleep(0.02)
    assert status["status"] == "cancelled" and status["error_code"] == "cancelled"
    assert status["stage"] == "sampling_structure"  # stopped inside the first sampler, not after the whole run
