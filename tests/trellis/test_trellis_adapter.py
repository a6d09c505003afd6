"""The TRELLIS adapter against a stand-in `trellis` package that checks how the real API is called.

TRELLIS cannot be installed on CPU machines, so a small package with the same import paths is written to a temp
folder and put first on sys.path. It records the environment at import time, every pipeline call, and whether
autograd was off, and fails loudly on the calls the old wrapper made wrongly (`pipeline(...)`, `.to(...)`).
"""

from __future__ import annotations

import io
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import trimesh
from PIL import Image

from nim_trellis.backends.base import MeshParams
from nim_trellis.backends.trellis import TrellisBackend
from tests.trellis.conftest import disc_image, encode, running

STAND_IN = """
import os
import numpy as np
import torch
import trimesh

IMPORT_ENV = {k: os.environ.get(k) for k in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND", "SPCONV_ALGO")}
CALLS = []


class Mesh:  # like MeshExtractResult: torch tensors, z up, colour in the first vertex attributes
    def __init__(self):
        box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
        self.vertices = torch.tensor(box.vertices, dtype=torch.float32)
        self.faces = torch.tensor(box.faces, dtype=torch.int64)
        self.vertex_attrs = torch.cat([torch.full((len(box.vertices), 3), 0.5), torch.zeros(len(box.vertices), 3)], 1)


class Gaussian:
    pass


class _Pipeline:
    kind = "?"

    @classmethod
    def from_pretrained(cls, path):
        CALLS.append(("from_pretrained", cls.kind, path))
        return cls()

    def cuda(self):
        CALLS.append(("cuda", self.kind))
        return None

    def to(self, *args, **kwargs):
        raise AssertionError("Pipeline.to() returns None; the adapter must call .cuda() and not assign")

    def __call__(self, *args, **kwargs):
        raise AssertionError("TRELLIS pipelines have no __call__; use .run()")

    def run(self, cond, num_samples=1, seed=42, sparse_structure_sampler_params=None, slat_sampler_params=None,
            formats=("mesh", "gaussian", "radiance_field"), **kwargs):
        CALLS.append(("run", self.kind, dict(cond=cond, seed=seed, ss=sparse_structure_sampler_params,
                      slat=slat_sampler_params, formats=list(formats), kwargs=kwargs,
                      inference=torch.is_inference_mode_enabled(), grad=torch.is_grad_enabled())))
        out = {}
        if "mesh" in formats:
            out["mesh"] = [Mesh()]
        if "gaussian" in formats:
            out["gaussian"] = [Gaussian()]
        return out
"""

PIPELINES = (
    STAND_IN
    + """

class TrellisImageTo3DPipeline(_Pipeline):
    kind = "image"


class TrellisTextTo3DPipeline(_Pipeline):
    kind = "text"
"""
)

POSTPROCESSING = """
import torch
import trimesh
from trellis.pipelines import CALLS, Gaussian, Mesh


def to_glb(app_rep, mesh, simplify=0.95, fill_holes=True, fill_holes_max_size=0.04, texture_size=1024,
           debug=False, verbose=True):
    assert isinstance(app_rep, Gaussian) and isinstance(mesh, Mesh)
    CALLS.append(("to_glb", dict(simplify=simplify, texture_size=texture_size, grad=torch.is_grad_enabled())))
    return trimesh.creation.icosphere(subdivisions=1)
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    pkg = tmp_path / "trellis"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "pipelines.py").write_text(textwrap.dedent(PIPELINES))
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "postprocessing_utils.py").write_text(textwrap.dedent(POSTPROCESSING))
    for var in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND", "SPCONV_ALGO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        del sys.modules[name]


def calls() -> list:
    return sys.modules["trellis.pipelines"].CALLS


def params(**kw: object) -> MeshParams:
    base = {"seed": 77, "ss_steps": 20, "slat_steps": 15, "ss_cfg": 7.5, "slat_cfg": 3.0}
    return MeshParams(**{**base, **kw})  # type: ignore[arg-type]


class Reporter:
    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, name: str, progress: float) -> None:
        self.stages.append(name)


def loaded_backend(make_settings, **overrides: object) -> TrellisBackend:
    settings = make_settings(
        backend_3d="trellis",
        trellis_attn_backend="flash_attn",
        trellis_sparse_attn_backend="xformers",
        trellis_spconv_algo="native",
        trellis_image_model="/models/TRELLIS-image-large",
        **overrides,
    )
    backend = TrellisBackend(settings)
    backend.load()
    calls().clear()  # drop the warm-up
    return backend


def test_trellis_load_sets_env_before_import_and_moves_to_cuda(stand_in: Path, make_settings) -> None:
    settings = make_settings(
        backend_3d="trellis",
        trellis_attn_backend="sdpa",
        trellis_spconv_algo="native",
        trellis_image_model="/models/TRELLIS-image-large",
    )
    TrellisBackend(settings).load()
    module = sys.modules["trellis.pipelines"]
    assert module.IMPORT_ENV == {"ATTN_BACKEND": "sdpa", "SPARSE_ATTN_BACKEND": "xformers", "SPCONV_ALGO": "native"}
    assert module.CALLS[:2] == [("from_pretrained", "image", "/models/TRELLIS-image-large"), ("cuda", "image")]
    warm = [c for c in module.CALLS if c[0] == "run"]
    assert len(warm) == 1 and warm[0][2]["inference"]  # warmed up before readiness


def test_trellis_textured_glb_uses_run_and_to_glb(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings, mesh_simplify=0.9, texture_size=2048)
    reporter = Reporter()
    art = backend.image_to_mesh(disc_image(128, alpha=False), params(), reporter)
    (run,) = [c[2] for c in calls() if c[0] == "run"]
    assert run["seed"] == 77
    assert run["ss"] == {"steps": 20, "cfg_strength": 7.5} and run["slat"] == {"steps": 15, "cfg_strength": 3.0}
    assert run["formats"] == ["mesh", "gaussian"]
    assert run["kwargs"] == {"preprocess_image": True}  # no alpha: upstream removes the background
    assert not run["grad"]
    (bake,) = [c[1] for c in calls() if c[0] == "to_glb"]
    assert bake == {"simplify": 0.9, "texture_size": 2048, "grad": True}  # texture optimisation needs autograd
    assert art.backend == "trellis" and art.seed == 77
    assert len(trimesh.load(io.BytesIO(art.data), file_type="glb", force="mesh").faces) == 80
    assert reporter.stages == ["preprocess", "sampling", "texture_bake"]


def test_trellis_rgba_input_skips_rembg(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    backend.image_to_mesh(disc_image(300, alpha=True), params(), Reporter())
    (run,) = [c[2] for c in calls() if c[0] == "run"]
    assert run["kwargs"] == {"preprocess_image": False}
    cond: Image.Image = run["cond"]
    assert cond.size == (518, 518) and cond.mode == "RGB"
    arr = np.asarray(cond)
    assert arr[0, 0].sum() == 0 and arr[259, 259].sum() > 0  # premultiplied: background black, object kept


def test_trellis_no_texture_vertex_coloured_y_up(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    art = backend.image_to_mesh(disc_image(64), params(no_texture=True), Reporter())
    (run,) = [c[2] for c in calls() if c[0] == "run"]
    assert run["formats"] == ["mesh"] and run["inference"]
    assert not [c for c in calls() if c[0] == "to_glb"]
    mesh = trimesh.load(io.BytesIO(art.data), file_type="glb", force="mesh")
    extents = mesh.bounds[1] - mesh.bounds[0]
    assert np.allclose(extents, [1.0, 3.0, 2.0])  # z-up box (1, 2, 3) stands 3 tall along y
    assert mesh.visual.kind == "vertex" and tuple(mesh.visual.vertex_colors[0][:3]) == (127, 127, 127)


def test_trellis_stl_output(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings)
    art = backend.image_to_mesh(disc_image(64), params(output_format="stl"), Reporter())
    assert art.media_type == "model/stl"
    assert trimesh.load(io.BytesIO(art.data), file_type="stl").is_watertight


def test_trellis_text_pipeline_when_configured(stand_in: Path, make_settings) -> None:
    backend = loaded_backend(make_settings, trellis_text_model="/models/TRELLIS-text-xlarge")
    assert backend.supports_text
    backend.text_to_mesh("a wooden chair", params(no_texture=True), Reporter())
    runs = [c for c in calls() if c[0] == "run"]
    assert [(c[1], c[2]["cond"]) for c in runs] == [("text", "a wooden chair")]


def test_trellis_service_text_goes_through_sana_without_text_model(stand_in: Path, make_settings) -> None:
    settings = make_settings(backend_3d="trellis", trellis_image_model="/models/img")
    with running(settings) as url:
        import httpx

        calls().clear()
        art = httpx.post(
            f"{url}/v1/infer", json={"prompt": "a vase", "seed": 5, "no_texture": True}, timeout=60
        ).json()["artifacts"][0]
        assert art["finishReason"] == "SUCCESS" and art["backend"] == "trellis"
        (run,) = [c for c in calls() if c[0] == "run"]
        assert run[1] == "image" and isinstance(run[2]["cond"], Image.Image) and run[2]["seed"] == 5
        image_art = httpx.post(f"{url}/v1/infer", json={"image": encode(disc_image(64))}, timeout=60).json()[
            "artifacts"
        ][0]
        assert image_art["finishReason"] == "SUCCESS"
