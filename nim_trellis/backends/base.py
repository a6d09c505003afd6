"""The one interface every 3D backend implements: image -> mesh artifact, text -> mesh artifact.

Backends run on the single worker thread. They report progress through `StageReporter.stage(...)` at each stage
boundary and `StageReporter.advance(...)` within a long stage (each sampling step); both are where a cancel or a
timeout takes effect (they raise), so a backend never needs its own cancel logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

OutputFormat = Literal["glb", "stl"]

MEDIA_TYPES: dict[str, str] = {"glb": "model/gltf-binary", "stl": "model/stl"}


@dataclass(frozen=True)
class MeshParams:
    """What a caller may choose about one 3D generation (already validated and defaulted)."""

    seed: int
    ss_steps: int
    slat_steps: int
    ss_cfg: float
    slat_cfg: float
    no_texture: bool = False
    output_format: OutputFormat = "glb"


@dataclass(frozen=True)
class MeshArtifact:
    """A finished 3D file and the facts a client needs about it."""

    data: bytes
    output_format: OutputFormat
    backend: str
    seed: int

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.output_format]


class StageReporter(Protocol):
    """Progress sink handed to backends by the job runner."""

    def stage(self, name: str, progress: float) -> None:
        """Enter stage `name` at overall progress 0..1; raises when the job was cancelled or timed out."""
        ...

    def advance(self, progress: float) -> None:
        """Move overall progress to 0..1 within the current stage; raises when the job was cancelled or timed out."""
        ...


class ScaledReporter:
    """Maps a part's own 0..1 progress into a slice [start, end] of the job's progress."""

    def __init__(self, ctx: StageReporter, start: float, end: float) -> None:
        self.ctx, self.start, self.end = ctx, start, end

    def stage(self, name: str, progress: float) -> None:
        self.ctx.stage(name, self.start + (self.end - self.start) * progress)

    def advance(self, progress: float) -> None:
        self.ctx.advance(self.start + (self.end - self.start) * progress)


@dataclass(frozen=True)
class Capability:
    """Whether an optional part of a backend can run here, and if not, why (for health and refusals)."""

    available: bool
    detail: str


class Backend3D(Protocol):
    """A 3D backend. `load` is called once, off the event loop; the rest run on the worker thread."""

    name: str
    supports_text: bool

    def load(self) -> None: ...

    def capabilities(self) -> dict[str, Capability]:
        """Optional parts by name (`texture`: textured GLB; `background_removal`: images without alpha); a part
        not listed is always available. Known once `load` has run."""
        ...

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact: ...

    def text_to_mesh(self, prompt: str, params: MeshParams, report: StageReporter) -> MeshArtifact:
        """Only called when `supports_text`; otherwise the service goes text -> image -> `image_to_mesh`."""
        ...
