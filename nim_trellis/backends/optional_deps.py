"""Third-party modules that upstream TRELLIS imports at module top, though only some requests use them.

`import trellis` imports the whole package: the image pipeline module imports rembg, the text pipeline open3d,
and `postprocessing_utils` nvdiffrast, xatlas, pyvista, pymeshfix, igraph and cv2. Left alone, a server without
the texture bake's CUDA extensions could not even serve an untextured GLB. So before TRELLIS is imported,
`defer(...)` imports each optional module itself; one that is missing or broken is replaced in `sys.modules` by a
placeholder (submodules too, so `import nvdiffrast.torch as dr` and `from pymeshfix import _meshfix` work), and
anything *used* from a placeholder raises `MissingDependency` naming the module and why it could not load. Which
features can run is decided from the same import results (`Features`), reported in `/v1/health/ready`, and a
request for a missing feature is refused before it queues.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# What each optional feature needs, as upstream imports it. Two modules are imported but never used on our paths:
# pyvista only by upstream's own decimation, which this adapter replaces, and open3d only by the text pipeline's
# mesh voxeliser (mesh-guided variants), so no feature needs them and the image installs neither (vtk and open3d
# are several hundred MB).
FEATURE_MODULES: dict[str, tuple[str, ...]] = {
    "texture": ("nvdiffrast.torch", "diff_gaussian_rasterization", "xatlas", "pymeshfix", "igraph", "cv2"),
    "background_removal": ("rembg",),
}
IMPORT_ONLY_MODULES: tuple[str, ...] = ("pyvista", "open3d")


class MissingDependency(RuntimeError):
    """Something used a module that could not be imported."""


@dataclass(frozen=True)
class Features:
    """Import problems by module; a feature is available when none of its modules has one."""

    problems: dict[str, str] = field(default_factory=dict)

    def missing(self, feature: str) -> dict[str, str]:
        return {m: self.problems[m] for m in FEATURE_MODULES[feature] if m in self.problems}

    def available(self, feature: str) -> bool:
        return not self.missing(feature)

    def reason(self, feature: str) -> str:
        """Why `feature` is unavailable, in a sentence; empty when it is available."""
        missing = self.missing(feature)
        return "; ".join(f"{m}: {why}" for m, why in missing.items())


def defer(modules: tuple[str, ...] | None = None) -> Features:
    """Import each optional module now; placeholders for those that fail. Returns what failed and why."""
    names = modules if modules is not None else _all_modules()
    problems: dict[str, str] = {}
    for name in names:
        if isinstance(sys.modules.get(name), Placeholder):
            problems[name] = sys.modules[name].__reason__  # type: ignore[union-attr]
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # missing, or present but broken (wrong torch build, missing system library)
            problems[name] = f"{type(e).__name__}: {e}".strip()
            _place(name, problems[name])
    _install_finder()
    return Features(problems)


def _all_modules() -> tuple[str, ...]:
    names = [m for modules in FEATURE_MODULES.values() for m in modules] + list(IMPORT_ONLY_MODULES)
    return tuple(dict.fromkeys(names))


class Placeholder(ModuleType):
    """Stands where a module failed to import; using anything from it raises `MissingDependency`."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name)
        self.__reason__ = reason
        self.__path__: list[str] = []  # a package, so its submodules resolve to placeholders too

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # lets `from pkg import _sub` fall back to importing a (placeholder) submodule
            raise AttributeError(attr)
        return MissingAttribute(f"{self.__name__}.{attr}", self.__reason__)


class MissingAttribute:
    """A name taken from a placeholder; calling it raises `MissingDependency`. Attribute chains stay lazy, because
    upstream evaluates annotations such as `o3d.geometry.TriangleMesh` when its modules are imported."""

    def __init__(self, name: str, reason: str) -> None:
        self._name, self._reason = name, reason

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise MissingDependency(f"{self._name} is not available ({self._reason})")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return MissingAttribute(f"{self._name}.{attr}", self._reason)


def _place(name: str, reason: str) -> None:
    """A placeholder for `name` and for each of its parent packages that did not import either."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix in sys.modules and depth < len(parts):
            continue
        placeholder = Placeholder(prefix, reason)
        sys.modules[prefix] = placeholder
        if depth > 1:
            setattr(sys.modules[".".join(parts[: depth - 1])], parts[depth - 1], placeholder)


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on `sys.meta_path`: a submodule of a placeholder becomes a placeholder with the same reason."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        parent = sys.modules.get(fullname.rpartition(".")[0])
        if not isinstance(parent, Placeholder):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        parent = sys.modules[spec.name.rpartition(".")[0]]
        return Placeholder(spec.name, parent.__reason__)  # type: ignore[attr-defined]

    def exec_module(self, module: ModuleType) -> None:
        return None


def _install_finder() -> None:
    if not any(isinstance(f, _PlaceholderFinder) for f in sys.meta_path):
        sys.meta_path.append(_PlaceholderFinder())
