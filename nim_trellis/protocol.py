"""Wire models of the 3D service, in the order of their public specs.

`InferRequest` follows the TRELLIS NIM `/v1/infer` body; `ImageGenerationRequest` and `ModerationRequest` follow
OpenAI's Images and Moderations APIs. Our extensions are marked "extension". Unknown fields are ignored, as the
public APIs do. Requests translate themselves into the service's own task types (`InferRequest.to_task`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from config import Settings
from nim_trellis.backends.base import MeshParams
from nim_trellis.errors import bad_request
from nim_trellis.images import decode_image

# Ranges of the TRELLIS NIM contract (REFERENCE.md §2); seeds fit numpy's and torch's 32-bit seeding.
MAX_SEED = 2**32 - 1
MIN_STEPS, MAX_STEPS = 10, 50
MAX_CFG = 10.0
MAX_IMAGES = 4
IMAGE_SIZE_MULTIPLE = 32  # SANA's VAE and patching need multiples of 32
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 64, 2048
MAX_IMAGE_STEPS = 50

FinishReason = Literal["SUCCESS", "CONTENT_FILTERED", "ERROR"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "filtered"]


def check_prompt_length(text: str, settings: Settings, param: str = "prompt") -> None:
    """The one prompt limit of every endpoint that takes one (3D, jobs, images, each moderation input)."""
    if len(text) > settings.max_prompt_chars:
        raise bad_request(
            f"`{param}` has {len(text)} characters; the limit is {settings.max_prompt_chars} (MAX_PROMPT_CHARS).",
            param,
        )


def check_image_side(image: Image.Image, settings: Settings, param: str = "image") -> None:
    """3D needs an object to see: an image below MIN_IMAGE_SIDE on either side is refused before queueing."""
    side = settings.min_image_side
    if min(image.size) < side:
        raise bad_request(
            f"{param} is {image.width}×{image.height} px; 3D needs at least {side}×{side} (MIN_IMAGE_SIDE). "
            "Send a larger image.",
            param,
        )


def resolve_seed(seed: int | None) -> int:
    """0 or None means "pick one"; the chosen seed is always reported back so results can be reproduced."""
    return seed if seed else secrets.randbelow(MAX_SEED) + 1


@dataclass(frozen=True)
class Task3D:
    """A validated 3D request: exactly one of `image` and `prompt` is set."""

    mode: Literal["image", "text"]
    image: Image.Image | None
    prompt: str | None
    params: MeshParams


class InferRequest(BaseModel):
    """Body of `POST /v1/infer` and `POST /v1/jobs`."""

    model_config = ConfigDict(extra="ignore")

    mode: Literal["image", "text"] | None = None
    image: str | None = None
    prompt: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    ss_sampling_steps: int | None = Field(None, ge=MIN_STEPS, le=MAX_STEPS)
    slat_sampling_steps: int | None = Field(None, ge=MIN_STEPS, le=MAX_STEPS)
    ss_cfg_scale: float | None = Field(None, ge=0.0, le=MAX_CFG)
    slat_cfg_scale: float | None = Field(None, ge=0.0, le=MAX_CFG)
    no_texture: bool = False
    output_format: Literal["glb", "stl"] = "glb"
    samples: int = 1

    @field_validator("samples")
    @classmethod
    def _one_sample(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only samples=1 is supported; send one request per sample")
        return v

    def resolve_mode(self) -> Literal["image", "text"]:
        has_image, has_prompt = bool(self.image), bool(self.prompt and self.prompt.strip())
        if has_image and has_prompt:
            raise bad_request("Send either `image` or `prompt`, not both.", "prompt")
        if not has_image and not has_prompt:
            raise bad_request("Send an `image` (data URI or base64) or a `prompt`.", "image")
        inferred: Literal["image", "text"] = "image" if has_image else "text"
        if self.mode and self.mode != inferred:
            field = "image" if self.mode == "image" else "prompt"
            raise bad_request(f"mode={self.mode!r} needs `{field}`.", "mode")
        return inferred

    def to_task(self, settings: Settings) -> Task3D:
        """Validate against the service limits, decode the image and fill defaults from the settings."""
        mode = self.resolve_mode()
        prompt = self.prompt.strip() if mode == "text" and self.prompt else None
        if prompt:
            check_prompt_length(prompt, settings)
        image = decode_image(self.image, settings) if mode == "image" and self.image else None
        if image is not None:
            check_image_side(image, settings)
        params = MeshParams(
            seed=resolve_seed(self.seed),
            ss_steps=self.ss_sampling_steps or settings.trellis_ss_steps,
            slat_steps=self.slat_sampling_steps or settings.trellis_slat_steps,
            ss_cfg=settings.trellis_ss_cfg if self.ss_cfg_scale is None else self.ss_cfg_scale,
            slat_cfg=settings.trellis_slat_cfg if self.slat_cfg_scale is None else self.slat_cfg_scale,
            no_texture=self.no_texture,
            output_format=self.output_format,
        )
        return Task3D(mode=mode, image=image, prompt=prompt, params=params)


class Artifact(BaseModel):
    base64: str
    finishReason: FinishReason  # the NIM contract spells it in camelCase
    seed: int
    backend: str  # extension: which backend made the file (`trellis` or `relief`)
    output_format: str  # extension: `glb` or `stl`


class InferResponse(BaseModel):
    artifacts: list[Artifact]


class JobCreated(BaseModel):
    id: str
    status: JobState
    queue_position: int | None


class JobStatus(BaseModel):
    id: str
    status: JobState
    stage: str | None
    progress: float
    queue_position: int | None
    error: str | None
    # extension: why it did not succeed (timeout, out_of_memory, cancelled, filtered, unavailable, failed)
    error_code: str | None = None
    seed: int | None
    backend: str
    output_format: str
    created: float
    finished: float | None
    note: str | None = None  # extension: e.g. "the GPU ran out of memory; retried without texture (...)"


class ImageGenerationRequest(BaseModel):
    """OpenAI Images `POST /v1/images/generations`, plus `seed` and `steps` (extensions)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    model: str | None = None  # accepted for OpenAI clients; the service has one image model
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # extension
    steps: int | None = Field(None, ge=1, le=MAX_IMAGE_STEPS)  # extension

    @field_validator("size")
    @classmethod
    def _valid_size(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height); both multiples of 32 within the supported range."""
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like '512x512', got {size!r}") from None
    for side in (width, height):
        if side % IMAGE_SIZE_MULTIPLE or not MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE:
            raise ValueError(
                f"size sides must be multiples of {IMAGE_SIZE_MULTIPLE} between {MIN_IMAGE_SIDE} and "
                f"{MAX_IMAGE_SIDE}, got {size!r}"
            )
    return width, height


class GeneratedImage(BaseModel):
    b64_json: str
    seed: int  # extension
    revised_prompt: str | None = None


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[GeneratedImage]
    backend: str  # extension: the image model that drew them


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None

    def texts(self, settings: Settings) -> list[str]:
        """The inputs as a list, within MODERATION_MAX_INPUTS and MAX_PROMPT_CHARS each."""
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise bad_request("`input` is empty; send a string or a list of strings.", "input")
        if len(texts) > settings.moderation_max_inputs:
            raise bad_request(
                f"`input` has {len(texts)} texts; the limit is {settings.moderation_max_inputs} per call "
                "(MODERATION_MAX_INPUTS). Split them over several calls.",
                "input",
            )
        for text in texts:
            check_prompt_length(text, settings, "input")
        return texts


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]  # empty when no classifier ran (`checked` false)
    checked: bool = True  # extension: false when no classifier decided (off, or broken with SAFETY_FAIL_CLOSED=false)


class ModerationResponse(BaseModel):
    id: str
    model: str  # the classifier that decided; "off" or "unchecked" when none did
    results: list[ModerationResult]
    warning: str | None = None  # extension: why the inputs were not checked


class BackendHealth(BaseModel):
    state: Literal["ready", "loading", "error", "off"]
    detail: str


class WorkerHealth(BaseModel):
    """One 3D worker process (TRELLIS_WORKERS > 1): its GPU, and whether its backend is loaded."""

    name: str
    device: str
    pid: int | None = None
    state: Literal["ready", "loading", "error"]
    detail: str = "starting"


class HealthResponse(BaseModel):
    status: Literal["ready", "loading", "error"]
    message: str
    backends: dict[str, BackendHealth]
    storage: BackendHealth  # whether results can be saved under DATA_DIR (servicekit.storage)
    queue_depth: int
    profile: str
    vram_profile: str = "unlimited"  # the GPU memory plan (servicekit/vram.py) and why it was chosen
    vram_reason: str = ""
    vram_applies: bool = False  # False when the models run on CPU
    vram_lowered: list[str] = Field(default_factory=list)  # quality/speed knobs the plan turns down
    workers: list[WorkerHealth] | None = None  # only with TRELLIS_WORKERS > 1 (nim_trellis/workers.py)
