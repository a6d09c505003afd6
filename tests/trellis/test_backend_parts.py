"""The TRELLIS adapter's own parts on their own: PyTorch-kernel attention, the face-budget simplifier, the
deferred optional imports, and the raw-file answer of /v1/infer."""

from __future__ import annotations

import io
import itertools
import re
import sys

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from nim_trellis.backends import optional_deps, torch_attention
from nim_trellis.backends.mesh_simplify import Mesh, simplify
from tests.trellis.conftest import disc_image, encode


# --- attention -------------------------------------------------------------------------------------------------
def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: list[int], cu_k: list[int]) -> torch.Tensor:
    """Each sequence on its own through plain SDPA."""
    parts = []
    for (a, b), (c, d) in zip(itertools.pairwise(cu_q), itertools.pairwise(cu_k), strict=True):
        out = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[c:d].transpose(0, 1), v[c:d].transpose(0, 1))
        parts.append(out.transpose(0, 1))
    return torch.cat(parts)


def test_varlen_attention_matches_each_sequence_alone() -> None:
    torch.manual_seed(0)
    cu_q, cu_k = [0, 5, 6, 19], [0, 7, 9, 12]
    q, k, v = torch.randn(19, 4, 8), torch.randn(12, 4, 8), torch.randn(12, 4, 8)
    got = torch_attention.flash_attn_varlen_func(
        q, k, v, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32), 13, 7
    )
    assert torch.allclose(got, reference(q, k, v, cu_q, cu_k), atol=1e-5)
    kv = torch.stack([k, v], dim=1)
    packed = torch_attention.flash_attn_varlen_kvpacked_func(
        q, kv, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32), 13, 7
    )
    assert torch.equal(packed, got)


def test_dense_attention_takes_flash_attn_layout() -> None:
    torch.manual_seed(1)
    qkv = torch.randn(2, 9, 3, 4, 8)  # [batch, seq, 3, heads, dim]
    q, k, v = qkv.unbind(dim=2)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(torch_attention.flash_attn_qkvpacked_func(qkv), expected, atol=1e-6)
    with pytest.raises(NotImplementedError):
        torch_attention.flash_attn_func(q, k, v, dropout_p=0.1)  # training-only arguments are refused, not ignored


def test_install_registers_the_module_as_flash_attn() -> None:
    before = sys.modules.get("flash_attn")
    try:
        assert torch_attention.install() is sys.modules["flash_attn"] is sys.modules[torch_attention.__name__]
    finally:
        if before is None:
            sys.modules.pop("flash_attn", None)
        else:
            sys.modules["flash_attn"] = before


# --- simplification --------------------------------------------------------------------------------------------
def sphere(subdivisions: int) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    vertices = torch.tensor(s.vertices, dtype=torch.float32)
    colours = (vertices[:, :1] > 0).float().expand(-1, 3).contiguous()  # one hemisphere white, one black
    return Mesh(vertices, torch.tensor(s.faces, dtype=torch.long), colours)


def test_simplify_meets_the_budget_and_keeps_the_shape() -> None:
    mesh = sphere(6)  # 81,920 faces
    out = simplify(mesh, 8000)
    assert 4000 < out.faces.shape[0] <= 8000
    radius = out.vertices.norm(dim=1)
    assert float(radius.min()) > 0.98 and float(radius.max()) < 1.02  # quadric placement stays on the surface
    assert int(out.faces.max()) < out.vertices.shape[0] and out.colours is not None
    assert out.colours.shape == (out.vertices.shape[0], 3)
    white = out.vertices[:, 0] > 0.2
    assert bool((out.colours[white] > 0.99).all()) and bool((out.colours[out.vertices[:, 0] < -0.2] < 0.01).all())
    volume = trimesh.Trimesh(out.vertices.numpy(), out.faces.numpy(), process=False).volume
    assert volume == pytest.approx(4 / 3 * np.pi, rel=0.02)


def test_simplify_leaves_a_mesh_within_budget_untouched() -> None:
    mesh = sphere(2)
    assert simplify(mesh, 10_000) is mesh


# --- deferred optional imports ---------------------------------------------------------------------------------
def test_missing_optional_modules_fail_only_when_used() -> None:
    names = ("chat3d_missing_ext.torch", "chat3d_missing_lib")
    try:
        features = optional_deps.defer(names)
        assert set(features.problems) == set(names)
        import chat3d_missing_ext.torch as ext
        from chat3d_missing_lib import _private_submodule  # submodules resolve to placeholders too

        assert isinstance(ext, optional_deps.Placeholder) and isinstance(_private_submodule, optional_deps.Placeholder)
        annotation = ext.geometry.TriangleMesh  # upstream evaluates such annotations at import: must not raise
        with pytest.raises(optional_deps.MissingDependency, match=re.escape("chat3d_missing_ext.torch.Context")):
            ext.Context()
        with pytest.raises(optional_deps.MissingDependency, match="ModuleNotFoundError"):
            annotation()
    finally:
        for name in [m for m in sys.modules if m.startswith(("chat3d_missing_ext", "chat3d_missing_lib"))]:
            del sys.modules[name]


def test_features_name_what_is_missing() -> None:
    features = optional_deps.Features({"xatlas": "ModuleNotFoundError: No module named 'xatlas'"})
    assert not features.available("texture") and features.available("background_removal")
    assert features.reason("texture") == "xatlas: ModuleNotFoundError: No module named 'xatlas'"


# --- /v1/infer's raw file --------------------------------------------------------------------------------------
def test_infer_returns_the_file_itself_when_asked(tiny_url: str) -> None:
    body = {"image": encode(disc_image()), "seed": 9, "no_texture": True}
    r = httpx.post(f"{tiny_url}/v1/infer", json=body, headers={"Accept": "model/gltf-binary"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "model/gltf-binary"
    assert (r.headers["x-seed"], r.headers["x-backend"], r.headers["x-finish-reason"]) == ("9", "relief", "SUCCESS")
    assert len(trimesh.load(io.BytesIO(r.content), file_type="glb", force="mesh").faces) > 0
    as_json = httpx.post(f"{tiny_url}/v1/infer", json=body, headers={"Accept": "application/json"}, timeout=60)
    assert as_json.json()["artifacts"][0]["finishReason"] == "SUCCESS"  # the NIM answer stays the default
