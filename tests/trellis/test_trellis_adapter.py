"""The TRELLIS adapter against a stand-in `trellis` package: the parts the real CPU run cannot reach.

The real upstream code runs on the CPU in test_real_trellis_cpu.py. What it cannot run there is the texture bake
(nvdiffrast and diff-gaussian-rasterization are CUDA-only) and rembg's u2net (a download). So this stand-in, with
upstream's import paths, records how the adapter calls the pipeline, its samplers and the bake steps: the order and
parameters of upstream's `to_glb` steps, autograd and inference modes, the environment at import time, per-step
progress and cancel, and the refusals when an optional part is missing. It fails loudly on the calls the old
wrapper made wrongly (`pipeline(...)`, assigning `.to(...)`'s None).
"""

from __future__ import annotations

import io
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image

from nim_trellis.backends import trellis as trellis_backend
from nim_trellis.backends.base import MeshParams
from nim_trellis.backends.trellis import TrellisBackend
from nim_trellis.job import JobCancelled
from tests.trellis.conftest import disc_image, encode, running

PIPELINES = """
import os
import sys
import numpy as np
import torch
import trimesh

IMPORT_ENV = {k: os.environ.get(k) for k in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND", "SPCONV_ALGO", "XFORMERS_DISABLED")}
FLASH_ATTN = sys.modules.get("flash_attn")
CALLS = []


class Mesh:  # like MeshExtractResult: torch tensors, z up, colour in the first vertex attributes
    def __init__(self):
        box = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
        box.apply_scale((0.5, 1.0, 1.5))
        self.vertices = torch.tensor(box.vertices, dtype=torch.float32)
        self.faces = torch.tensor(box.faces, dtype=torch.int64)
        self.vertex_attrs = torch.cat([torch.full((len(box.vertices), 3), 0.5), torch.zeros(len(box.vertices), 3)], 1)
        self.success = True


class Gaussian:
    pass


class Sampler:
    def sample_once(self, *args, **kwargs):
        CALLS.append(("step",))


class _Pipeline:
    kind = "?"

    def __init__(self):
        self.sparse_structure_sampler, self.slat_sampler = Sampler(), Sampler()

    @classmethod
    def from_pretrained(cls, path):
        CALLS.append(("from_pretrained", cls.kind, path))
        return cls()

    def to(self, device):
        CALLS.append(("to", self.kind, str(device)))
        return None  # as upstream: the pipeline moves in place

    def __call__(self, *args, **kwargs):
        raise AssertionError("TRELLIS pipelines have no __call__; use .run()")

    def decode_slat(self, slat, formats):
        CALLS.append(("decode", list(formats)))
        out = {"mesh": [Mesh()]}
        if "gaussian" in formats:
            out["gaussian"] = [Gaussian()]
        return out

    def run(self, cond, num_samples=1, seed=42, sparse_structure_sampler_params=None, slat_sampler_params=None,
            formats=("mesh", "gaussian", "radiance_field"), **kwargs):
        CALLS.append(("run", self.kind, dict(cond=cond, seed=seed, ss=sparse_structure_sampler_params,
                      slat=slat_sampler_params, formats=list(formats), kwargs=kwargs,
                      inference=torch.is_inference_mode_enabled(), grad=torch.is_grad_enabled())))
        for _ in range(sparse_structure_sampler_params["steps"]):
            self.sparse_structure_sampler.sample_once()
        for _ in range(slat_sampler_params["steps"]):
            self.slat_sampler.sample_once()
        return self.decode_slat(None, formats)


class TrellisImageTo3DPipeline(_Pipeline):
    kind = "image"


class TrellisTextTo3DPipeline(_Pipeline):
    kind = "text"
"""

POSTPROCESSING = """
import numpy as np
import torch
from trellis.pipelines import CALLS


def postprocess_mesh(vertices, faces, **kw):
    CALLS.append(("postprocess_mesh", dict(faces=len(faces), **kw)))
    return vertices, faces


def parametrize_mesh(vertices, faces):
    CALLS.append(("parametrize_mesh",))
    return vertices, faces, np.zeros((len(vertices), 2), np.float32)


def bake_texture(vertices, faces, uvs, observations, masks, extrinsics, intrinsics, texture_size=2048, mode="opt",
                 lambda_tv=1e-2, **kw):
    CALLS.append(("bake_texture", dict(views=len(observations), texture_size=texture_size, mode=mode,
                  lambda_tv=lambda_tv, grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled())))
    return np.full((texture_size, texture_size, 3), 128, np.uint8)
"""

RENDER_UTILS = """
import numpy as np
import torch
from trellis.pipelines import CALLS


def render_multiview(sample, resolution=512, nviews=30):
    CALLS.append(("render_multiview", dict(resolution=resolution, nviews=nviews)))
    views = [np.full((8, 8, 3), 100, np.uint8) for _ in range(nviews)]
    return views, [torch.eye(4) for _ in range(nviews)], [torch.eye(3) for _ in range(nviews)]
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    files = {
        "trellis/__init__.py": "",
        "trellis/pipelines.py": PIPELINES,
        "trellis/utils/__init__.py": "",
        "trellis/utils/postprocessing_utils.py": POSTPROCESSING,
        "trellis/utils/render_utils.py": RENDER_UTILS,
        # rembg's u2net weights are a download: an importable rembg makes background removal available.
        "rembg/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    for var in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND", "SPCONV_ALGO", "XFORMERS_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    # The stand-in pipelines take any path, and DINOv2 is never loaded: skip the on-disk checks (test_offline_start
    # and test_real_trellis_cpu cover them).
    monkeypatch.setattr(trellis_backend, "model_sources", lambda s: (s.trellis_image_model, s.trellis_text_model))
    sys.modules.pop("rembg", None)  # an earlier test may have left a placeholder
    yield tmp_path
    for name in [m for m in sys.modules if m in ("trellis", "rembg") or m.startswith("trellis.")]:
        del sys.modules[name]


def calls() -> list:
    return sys.modules["trellis.pipelines"].CALLS


def params(**kw: object) -> MeshParams:
    base = {"seed": 77, "ss_steps": 4, "slat_steps": 3, "ss_cfg": 7.5, "slat_cfg": 3.0}
    return MeshParams(**{**base, **kw})  # type: ignore[arg-type]


class Reporter:
    def __init__(self, cancel_at: int | None = None) -> None:
        self.stages: list[str] = []
        self.progress: list[float] = []
        self.cancel_at = cancel_at

    def stage(self, name: str, progress: float) -> None:
        self.stages.append(name)
        self.advance(progress)

    def advance(self, progress: float) -> None:
        self.progress.append(progress)
        if self.cancel_at is not None and len(self.progress) > self.cancel_at:
            raise JobCancelled()


def loaded_backend(make_settings, *, texture: bool = False, **overrides: object) -> TrellisBackend:
    settings = make_settings(
        backend_3d="trellis", trellis_device="cpu", trellis_image_model="/models/TRELLIS-image-large", **overrides
    )
    backend = TrellisBackend(settings)
    backend.load()
    if texture:  # the bake's CUDA extensions cannot load on a CPU; the stand-in bake records its calls instead
        backend._texture_problem = ""
    calls().clear()  # drop the warm-up
    return backend


def test_trellis_load_sets_env_before_import_and_moves_in_place(stand_in: Path, make_settings) -> None:
    TrellisBackend(make_settings(backend_3d="trellis", trellis_device="cpu", trellis_image_model="/m/img")).load()
    module = sys.modules["trellis.pipelines"]
    # Sparse attention goes through PyTorch's kernels (a `flash_attn` module of ours), and DINOv2 never sees an
    # xformers built for another torch.
    assert module.IMPORT_ENV == {
        "ATTN_BACKEND": "sdpa",
        "SPARSE_ATTN_BACKEND": "flash_attn",
        "SPCONV_ALGO": "native",
        "XFORMERS_DISABLED": "1",
    }
    assert module.FLASH_ATTN.__name__ == "nim_trellis.backends.torch_attention"
    assert module.CALLS[:2] == [("from_pretrained", "image", "/m/img"), ("to", "image", "cpu")]
    warm = [c for c in module.CALLS if c[0] == "run"]
    assert len(warm) == 1 and warm[0][2]["inference"]  # warmed up before readiness


def test_trellis_textured_glb_runs_upstream_bake_steps_in_order(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings, texture=True, mesh_simplify=0.9, texture_size=256)
    reporter = Reporter()
    art = backend.image_to_mesh(disc_image(128, alpha=False), params(), reporter)
    (run,) = [c[2] for c in calls() if c[0] == "run"]
    assert run["seed"] == 77 and run["formats"] == ["mesh", "gaussian"]
    assert run["ss"] == {"steps": 4, "cfg_strength": 7.5} and run["slat"] == {"steps": 3, "cfg_strength": 3.0}
    assert run["kwargs"] == {"preprocess_image": True}  # no alpha: upstream removes the background
    assert not run["grad"] and not run["inference"]  # no_grad: the bake's autograd can use these tensors
    bake = [c for c in calls() if c[0] in ("postprocess_mesh", "parametrize_mesh", "render_multiview", "bake_texture")]
    assert [c[0] for c in bake] == ["postprocess_mesh", "parametrize_mesh", "render_multiview", "bake_texture"]
    post = bake[0][1]
    assert post["faces"] <= 512  # our decimation kept 10 % of the 5120 faces before upstream's hole filling
    assert post["simplify"] is False and post["fill_holes"] is True
    assert post["fill_holes_max_hole_nbe"] == int(250 * np.sqrt(0.1))  # as to_glb derives it
    assert post["fill_holes_num_views"] == 1000 and post["fill_holes_resolution"] == 1024
    assert bake[2][1] == {"resolution": 1024, "nviews": 100}
    assert bake[3][1] == {"views": 100, "texture_size": 256, "mode": "opt", "lambda_tv": 0.01, "grad": True,
                          "inference": False}  # fmt: skip
    glb = trimesh.load(io.BytesIO(art.data), file_type="glb", force="mesh")
    assert glb.visual.kind == "texture" and art.backend == "trellis" and art.seed == 77
    assert reporter.stages == [
        "preprocess", "sampling_structure", "sampling_latent", "decoding",
        "decimate", "fill_holes", "uv_unwrap", "render_views", "texture_optimise", "export",
    ]  # fmt: skip


def test_trellis_progress_follows_every_sampling_step(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    reporter = Reporter()
    backend.image_to_mesh(disc_image(64), params(no_texture=True, ss_steps=5, slat_steps=6), reporter)
    assert len([c for c in calls() if c[0] == "step"]) == 11
    assert len(reporter.progress) >= 11 + 3  # a report per step, plus preprocess, decoding and export
    assert reporter.progress == sorted(reporter.progress) and 0.0 <= reporter.progress[0] < reporter.progress[-1] < 1


def test_trellis_cancel_takes_effect_within_one_step(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    with pytest.raises(JobCancelled):
        backend.image_to_mesh(disc_image(64), params(no_texture=True, ss_steps=10), Reporter(cancel_at=3))
    assert len([c for c in calls() if c[0] == "step"]) == 2  # the third step's report raised before it ran
    assert backend._run is None


def test_trellis_rgba_input_skips_rembg(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    backend.image_to_mesh(disc_image(300, alpha=True), params(no_texture=True), Reporter())
    (run,) = [c[2] for c in calls() if c[0] == "run"]
    assert run["kwargs"] == {"preprocess_image": False}
    cond: Image.Image = run["cond"]
    assert cond.size == (518, 518) and cond.mode == "RGB"
    arr = np.asarray(cond)
    assert arr[0, 0].sum() == 0 and arr[259, 259].sum() > 0  # premultiplied: background black, object kept


def test_trellis_no_texture_vertex_coloured_y_up_within_face_budget(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings, mesh_face_budget=1000)
    art = backend.image_to_mesh(disc_image(64), params(no_texture=True), Reporter())
    (run,) = [c[2] for c in calls() if c[0] == "run"]
    assert run["formats"] == ["mesh"] and run["inference"]
    assert not [c for c in calls() if c[0] == "bake_texture"]
    mesh = trimesh.load(io.BytesIO(art.data), file_type="glb", force="mesh")
    assert 500 < len(mesh.faces) <= 1000  # 5120 faces simplified to the budget
    extents = mesh.bounds[1] - mesh.bounds[0]
    assert np.allclose(extents, [1.0, 3.0, 2.0], atol=0.1)  # z-up (1, 2, 3) ellipsoid stands 3 tall along y
    assert mesh.visual.kind == "vertex" and tuple(mesh.visual.vertex_colors[0][:3]) == (128, 128, 128)


def test_trellis_stl_output(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    art = backend.image_to_mesh(disc_image(64), params(output_format="stl"), Reporter())
    assert art.media_type == "model/stl"
    assert len(trimesh.load(io.BytesIO(art.data), file_type="stl").faces) == 5120


def test_trellis_text_pipeline_when_configured(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings, trellis_text_model="/models/TRELLIS-text-xlarge")
    assert backend.supports_text
    backend.text_to_mesh("a wooden chair", params(no_texture=True), Reporter())
    runs = [c for c in calls() if c[0] == "run"]
    assert [(c[1], c[2]["cond"]) for c in runs] == [("text", "a wooden chair")]


def test_trellis_service_text_goes_through_sana_without_text_model(stand_in: Path, make_settings) -> None:
    settings = make_settings(backend_3d="trellis", trellis_device="cpu", trellis_image_model="/models/img")
    with running(settings) as url:
        calls().clear()
        r = httpx.post(f"{url}/v1/infer", json={"prompt": "a vase", "seed": 5, "no_texture": True}, timeout=60)
        art = r.json()["artifacts"][0]
        assert art["finishReason"] == "SUCCESS" and art["backend"] == "trellis"
        (run,) = [c for c in calls() if c[0] == "run"]
        assert run[1] == "image" and isinstance(run[2]["cond"], Image.Image) and run[2]["seed"] == 5


def test_trellis_service_refuses_what_it_cannot_make(stand_in: Path, make_settings) -> None:
    """Without the bake's extensions (not installed here) a textured GLB is refused before it queues, with the
    reason and the fix; health says so; untextured and STL still work."""
    (stand_in / "rembg" / "__init__.py").unlink()
    (stand_in / "rembg").rmdir()
    settings = make_settings(backend_3d="trellis", trellis_device="cpu", trellis_image_model="/models/img")
    with running(settings) as url:
        ready = httpx.get(f"{url}/v1/health/ready").json()
        assert ready["status"] == "ready" and ready["backends"]["texture"]["state"] == "off"
        assert "nvdiffrast" in ready["backends"]["texture"]["detail"] and "texture unavailable" in ready["message"]
        assert ready["backends"]["background_removal"]["state"] == "off"
        rgba = encode(disc_image(64, alpha=True))
        textured = httpx.post(f"{url}/v1/infer", json={"image": rgba}, timeout=60)
        assert textured.status_code == 501 and textured.json()["error"]["code"] == "texture_unavailable"
        assert "no_texture" in textured.json()["error"]["message"]
        opaque = httpx.post(f"{url}/v1/infer", json={"image": encode(disc_image(64, alpha=False)), "no_texture": True})
        assert opaque.status_code == 501 and opaque.json()["error"]["code"] == "background_removal_unavailable"
        calls().clear()
        for body in ({"image": rgba, "no_texture": True}, {"image": rgba, "output_format": "stl"}):
            assert httpx.post(f"{url}/v1/infer", json=body, timeout=60).json()["artifacts"][0]["finishReason"] == (
                "SUCCESS"
            )
        assert len([c for c in calls() if c[0] == "run"]) == 2  # refusals never reached the GPU queue
