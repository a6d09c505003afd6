"""The real upstream TRELLIS on the CPU, with tiny random weights: what a test needs to run it, once per session.

third_party/ holds upstream's sources at the refs the GPU image uses (TRELLIS with FlexiCubes, EasternJournalist's
utils3d, facebookresearch's dinov2). `cpu_trellis(cache)` unpacks them once under `cache`, imports TRELLIS the way
the image runs it (PyTorch's own attention kernels, `defer()`ed optional modules, docker/kaolin_stub), lays out
`$TORCH_HOME/hub` so DINOv2 loads offline, builds the tiny pipeline folder (bench/random_models.py) and yields its
paths; on exit everything it changed in the process is put back:

    with cpu_trellis(cache) as tiny:
        with hub_cache_first():  # nim_trellis.backends.trellis: no GitHub probe for DINOv2
            pipe = TrellisImageTo3DPipeline.from_pretrained(str(tiny.pipeline))

Stand-ins, each only because the real thing cannot run on a CPU, or not beside this project's CPU torch:
- `torchvision`, only while `trellis` is imported (`_torchvision_stand_in`);
- the `device="cuda"` defaults of `SparseFeatures2Mesh` (cube2mesh.py; it passes them on to `FlexiCubes` and the
  dense grid) and of `Gaussian` (gaussian_model.py), and the `.cuda()` calls in `Gaussian.setup_functions`;
- spconv's inference path for CPU tensors (`_spconv_cpu_bias`), and one torch thread (`_one_thread`).
Upstream's code itself is not changed: the CPU run exercises the same files the GPU image runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from bench.random_trellis import Sources, unpack_sources

ROOT = Path(__file__).resolve().parents[2]
KAOLIN_STUB = ROOT / "docker" / "kaolin_stub"  # the image's own stand-in for kaolin (only check_tensor is used)
# Read by TRELLIS and DINOv2 at import time. XFORMERS_DISABLED: DINOv2 would otherwise try xformers whatever
# TRELLIS is told; SPARSE_ATTN_BACKEND=flash_attn is served by nim_trellis.backends.torch_attention.
IMPORT_ENV = {
    "ATTN_BACKEND": "sdpa",
    "SPARSE_ATTN_BACKEND": "flash_attn",
    "XFORMERS_DISABLED": "1",
    "SPCONV_ALGO": "native",
}
SIZE = "tiny"


@dataclass(frozen=True)
class TinyTrellis:
    sources: Sources
    torch_home: Path  # $TORCH_HOME with the DINOv2 hub cache
    pipeline: Path  # for TrellisImageTo3DPipeline.from_pretrained


@contextlib.contextmanager
def cpu_trellis(cache: Path) -> Iterator[TinyTrellis]:
    """Everything the real TRELLIS needs on this CPU for the duration; the tiny pipeline built once under `cache`."""
    sources = unpack_sources(Path(cache) / "third_party")
    torch_home = Path(cache) / "torch"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment({**IMPORT_ENV, "TORCH_HOME": str(torch_home)}))
        stack.enter_context(_sys_path([sources.trellis, sources.utils3d, KAOLIN_STUB]))
        stack.enter_context(_imported_trellis())
        for stand_in in (_device_defaults, _gaussian_cuda_calls, _spconv_cpu_bias, _one_thread):
            stack.enter_context(stand_in())
        yield TinyTrellis(sources, torch_home, build_tiny(cache, sources, torch_home))


def build_tiny(cache: Path, sources: Sources, torch_home: Path) -> Path:
    """The tiny pipeline folder and its DINOv2 (random ViT-S/14 with registers) in the hub cache."""
    from bench.random_trellis import TRELLIS_IMAGE_COND, build_dinov2_hub, build_trellis_image

    build_dinov2_hub(torch_home, sources.dinov2, TRELLIS_IMAGE_COND[SIZE], "cpu")
    return build_trellis_image(Path(cache) / "models", "cpu", size=SIZE)


# --- the process state cpu_trellis changes and puts back ----------------------------------------------------------
@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _sys_path(paths: list[Path]) -> Iterator[None]:
    entries = [str(p) for p in paths]
    sys.path[:0] = entries
    try:
        yield
    finally:
        for entry in entries:
            sys.path.remove(entry)


@contextlib.contextmanager
def _imported_trellis() -> Iterator[None]:
    """`import trellis` as our adapter does it; on exit TRELLIS leaves sys.modules, so a later import (another
    test's fake package) finds what is then on the path, and `flash_attn` is what it was before."""
    import transformers  # noqa: F401  (imported first: it probes for torchvision once, at import)

    from nim_trellis.backends import optional_deps, torch_attention

    if "trellis" in sys.modules:
        raise RuntimeError(f"another trellis is imported already: {sys.modules['trellis']!r}")
    saved_flash_attn = sys.modules.get("flash_attn")
    optional_deps.defer()  # rembg, open3d, nvdiffrast, xatlas, pyvista, pymeshfix, igraph, cv2: fail only when used
    torch_attention.install()
    with _torchvision_stand_in():
        import trellis
        import trellis.pipelines  # noqa: F401
    try:
        yield
    finally:
        for name in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
            del sys.modules[name]
        if saved_flash_attn is None:
            sys.modules.pop("flash_attn", None)
        else:
            sys.modules["flash_attn"] = saved_flash_attn


# --- stand-ins ----------------------------------------------------------------------------------------------------
class _Compose:
    def __init__(self, transforms: list[Callable[[Any], Any]]) -> None:
        self.transforms = transforms

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x


class _Normalize:
    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: Any) -> Any:  # a [..., C, H, W] tensor, as torchvision's Normalize takes it
        mean, std = x.new_tensor(self.mean)[:, None, None], x.new_tensor(self.std)[:, None, None]
        return (x - mean) / std


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Stands in for torchvision while `trellis` is imported. PyPI's torchvision wheels are CUDA builds linked to
    libc10_cuda: beside this project's CPU torch their import fails (`operator torchvision::nms does not exist`),
    and the CPU builds live on PyTorch's own index, which these machines cannot reach. TRELLIS's image pipeline
    uses only `transforms.Compose([transforms.Normalize(ImageNet mean, std)])`; the pipeline module keeps that
    reference, so the stand-in leaves sys.modules right after the import and nothing else ever sees it."""
    package = types.ModuleType("torchvision")
    package.__spec__ = ModuleSpec("torchvision", None)  # so importlib.util.find_spec does not raise meanwhile
    package.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
    package.transforms.Compose, package.transforms.Normalize = _Compose, _Normalize  # type: ignore[attr-defined]
    modules = {"torchvision": package, "torchvision.transforms": package.transforms}  # type: ignore[attr-defined]
    if any(name in sys.modules for name in modules):
        raise RuntimeError("a torchvision is already imported; the stand-in would hide it")
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            del sys.modules[name]


@contextlib.contextmanager
def _device_defaults() -> Iterator[None]:
    """Upstream hard-codes `device="cuda"` defaults where the mesh decoder builds its FlexiCubes extractor
    (`SparseFeatures2Mesh`, which passes it on to `FlexiCubes` and the dense grid) and where the Gaussian decoder
    makes each `Gaussian`; a CPU torch cannot create CUDA tensors. The stand-in default is torch's current default
    device: the CPU here, `meta` inside `with torch.device("meta")`. A device passed explicitly is kept."""
    from trellis.representations.gaussian.gaussian_model import Gaussian
    from trellis.representations.mesh.cube2mesh import SparseFeatures2Mesh

    with contextlib.ExitStack() as stack:
        for cls in (SparseFeatures2Mesh, Gaussian):
            stack.enter_context(_patched(cls, "__init__", _default_device(cls.__init__)))
        yield


def _default_device(init: Callable[..., None]) -> Callable[..., None]:
    import torch

    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if "device" not in signature.bind_partial(self, *args, **kwargs).arguments:
            kwargs["device"] = torch.get_default_device()
        init(self, *args, **kwargs)

    return __init__


@contextlib.contextmanager
def _gaussian_cuda_calls() -> Iterator[None]:
    """`Gaussian.setup_functions` moves its three bias tensors with `.cuda()`, which a CPU torch refuses; the
    stand-in runs it with `Tensor.cuda` moving to the Gaussian's own device instead (for that call only)."""
    import torch
    from trellis.representations.gaussian.gaussian_model import Gaussian

    setup = Gaussian.setup_functions

    def setup_functions(self: Any) -> None:
        with _patched(torch.Tensor, "cuda", lambda tensor, *_a, **_k: tensor.to(self.device)):
            setup(self)

    with _patched(Gaussian, "setup_functions", setup_functions):
        yield


@contextlib.contextmanager
def _spconv_cpu_bias() -> Iterator[None]:
    """spconv 2.3.8's CPU build refuses its inference path when a conv has a bias (it fuses the bias into the
    kernel: `AssertionError: cpu don't support act and bias`). On CPU tensors the stand-in calls the conv's
    `_conv_forward(True, ...)`, spconv's training path, which adds the bias after the convolution: the same
    arithmetic. CUDA tensors take spconv's own forward."""
    from spconv.pytorch.conv import SparseConvolution

    forward = SparseConvolution.forward

    def cpu_forward(self: Any, input: Any, add_input: Any = None) -> Any:
        if input.features.is_cuda:
            return forward(self, input, add_input)
        return self._conv_forward(
            True, input, self.weight, self.bias, add_input, name=self.name,
            sparse_unique_name=self._sparse_unique_name, act_type=self.act_type, act_alpha=self.act_alpha,
            act_beta=self.act_beta,
        )  # fmt: skip

    with _patched(SparseConvolution, "forward", cpu_forward):
        yield


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """spconv's CPU convolutions gave wrong results with more than one torch thread; the pytest session is one
    process, so the previous count comes back afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name = value` for the duration; an attribute `owner` only inherited is inherited again afterwards."""
    own = name in owner.__dict__
    saved = owner.__dict__.get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if own:
            setattr(owner, name, saved)
        else:
            delattr(owner, name)
