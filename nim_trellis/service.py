"""Service logic behind the routers: model loading and health, 3D jobs, text-to-image and moderation.

Routers call these methods and nothing else. All GPU work goes through `JobQueue` (one worker); the async methods
only wait on job futures, so the event loop never blocks. The GPU memory plan (`servicekit/vram.py`) sets the
texture size, SANA's placement and TRELLIS's low-VRAM mode, and whether GPU stages take the VRAM lease
(`servicekit/vram_lease.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from PIL import Image

from config import Settings
from nim_trellis.backends.base import Backend3D, MeshArtifact, ScaledReporter
from nim_trellis.backends.relief import has_real_alpha
from nim_trellis.errors import ServiceError
from nim_trellis.imagegen.sana import SanaImageGenerator
from nim_trellis.jobs import ContentFiltered, Job, JobContext, JobQueue, LeanRetry
from nim_trellis.safety import Decision, SafetyGate, SafetyUnavailable
from nim_trellis.schemas import (
    Artifact,
    BackendHealth,
    FinishReason,
    GeneratedImage,
    HealthResponse,
    ImageGenerationRequest,
    ImageGenerationResponse,
    InferRequest,
    InferResponse,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    Task3D,
    parse_size,
    resolve_seed,
)
from servicekit.vram import VramPlan, plan_3d
from servicekit.vram_lease import lease_for

log = logging.getLogger("nim_trellis.service")

Disconnected = Callable[[], Awaitable[bool]]  # Starlette's `request.is_disconnected`

# How a failed /v1/infer job answers: (HTTP status, error code); anything else is 500 generation_failed.
INFER_FAILURES = {
    "timeout": (504, "timeout"),
    "out_of_memory": (503, "out_of_memory"),
    "cancelled": (503, "cancelled"),
    "unavailable": (501, "unavailable"),
}
OPTIONAL = ("texture", "background_removal")  # optional parts of the 3D backend: "off" never blocks readiness
MODERATION_CATEGORY = "sexual"  # the classifiers we use detect sexual content only
TEXT_STAGE_SHARE = 0.3  # share of a text-mode job's progress spent before the 3D backend starts


def make_backend(settings: Settings, plan: VramPlan) -> Backend3D:
    if settings.backend_3d == "trellis":
        from nim_trellis.backends.trellis import TrellisBackend

        fitted = settings.model_copy(update={"texture_size": plan.texture(settings.texture_size)})
        return TrellisBackend(fitted, low_vram=plan.applies and plan.trellis_low_vram)
    from nim_trellis.backends.relief import ReliefBackend

    return ReliefBackend(settings)


class TrellisService:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend3D | None = None,
        imagegen: SanaImageGenerator | None = None,
        safety: SafetyGate | None = None,
        vram: VramPlan | None = None,
    ) -> None:
        self.settings = settings
        self.vram = vram or plan_3d(settings)
        self.lease = lease_for(settings, self.vram, role="3d")
        self.backend = backend or make_backend(settings, self.vram)
        offload = self.vram.applies and self.vram.sana_placement == "offload"
        self.imagegen = imagegen or SanaImageGenerator(settings, offload=offload)
        self.safety = safety or SafetyGate(settings)
        self.backend_health = BackendHealth(state="loading", detail=f"loading {self.backend.name}")
        self.queue = JobQueue(
            max_queued=settings.jobs_queue_size,
            timeout_s=settings.job_timeout_s,
            retention_s=settings.job_retention_s,
            results_dir=settings.data_dir / "jobs",
            retry_after_s=settings.trellis_retry_after_s,
            oom_advice=self.vram.oom_advice(),
        )
        self._loader = threading.Thread(target=self.load_models, name="trellis-loader", daemon=True)

    # --- lifecycle and health ------------------------------------------------------------------------------
    def start(self) -> None:
        self.queue.start()
        self._loader.start()  # in the background, so /v1/health/live answers at once

    def stop(self) -> None:
        self.queue.stop()

    def load_models(self) -> None:
        started = time.monotonic()
        try:
            self.backend.load()
            self.backend_health = BackendHealth(state="ready", detail=f"{self.backend.name} backend loaded")
        except Exception as e:
            log.exception("3D backend %s failed to load", self.backend.name)
            self.backend_health = BackendHealth(state="error", detail=f"{self.backend.name}: {type(e).__name__}: {e}")
        self.imagegen.load()
        self.safety.load()
        log.info("model loading finished in %.1fs: %s", time.monotonic() - started, self.components())
        log.info("GPU memory plan %s (%s): %s", self.vram.profile, self.vram.reason, self.vram.lowered or "as set")

    def components(self) -> dict[str, BackendHealth]:
        parts = {
            "3d": self.backend_health,
            "imagegen": self.imagegen.health,
            "safety_prompt": self.safety.prompt.health,
            "safety_image": self.safety.image.health,
        }
        if self.backend_health.state == "ready":  # optional parts of the 3D backend, known once it has loaded
            for name, cap in self.backend.capabilities().items():
                parts[name] = BackendHealth(state="ready" if cap.available else "off", detail=cap.detail)
        return parts

    def health(self) -> HealthResponse:
        parts = self.components()
        fail_open = not self.settings.safety_fail_closed
        blocking = {
            name: h for name, h in parts.items() if h.state == "error" and not (fail_open and name.startswith("safety"))
        }
        warnings = [f"{name}: {h.detail}" for name, h in parts.items() if h.state == "error" and name not in blocking]
        warnings += [
            f"{name} unavailable: {h.detail}" for name, h in parts.items() if name in OPTIONAL and h.state == "off"
        ]
        status: Literal["ready", "loading", "error"]
        if blocking:
            status, message = "error", "; ".join(f"{n}: {h.detail}" for n, h in blocking.items())
        elif any(h.state == "loading" for h in parts.values()):
            status, message = "loading", "models are loading"
        else:
            status, message = "ready", "ready" + ("" if not warnings else " with warnings: " + "; ".join(warnings))
        return HealthResponse(
            status=status,
            message=message,
            backends=parts,
            queue_depth=self.queue.depth(),
            profile=self.settings.profile,
            **self.vram.health_fields(),
        )

    def require(self, *names: str) -> None:
        """503 with Retry-After unless the named components can serve (off components are the caller's concern)."""
        parts = self.components()
        for name in names:
            h = parts[name]
            if h.state == "loading":
                raise ServiceError(
                    503,
                    f"The {name} model is still loading; retry shortly.",
                    code="not_ready",
                    retry_after_s=self.settings.trellis_retry_after_s,
                )
            if h.state == "error" and not (name.startswith("safety") and not self.settings.safety_fail_closed):
                raise ServiceError(
                    503,
                    f"The {name} model failed to load: {h.detail}",
                    code="backend_error",
                    retry_after_s=self.settings.trellis_retry_after_s,
                )

    # --- 3D ------------------------------------------------------------------------------------------------
    async def submit_3d(self, request: InferRequest, *, in_memory: bool = False) -> Job:
        # Decoding a large image (and checking its alpha) takes tens of milliseconds: off the event loop.
        task = await asyncio.to_thread(self._checked_task, request)
        return self.enqueue_3d(task, in_memory=in_memory)

    def _checked_task(self, request: InferRequest) -> Task3D:
        task = request.to_task(self.settings)
        self._check_capabilities(task)
        return task

    def enqueue_3d(self, task: Task3D, *, in_memory: bool = False) -> Job:
        self.require("3d", "safety_prompt", "safety_image")
        if task.mode == "text" and not self.backend.supports_text:
            self.require("imagegen")
            if not self.imagegen.enabled:
                raise ServiceError(
                    503,
                    "Text mode needs a text-to-image model: set IMAGEGEN_MODEL (or "
                    "TRELLIS_TEXT_MODEL with BACKEND_3D=trellis), or send an image.",
                    code="text_mode_unavailable",
                    param="prompt",
                )
        return self.queue.submit(
            "3d",
            lambda ctx: self._run_3d(task, ctx),
            backend=self.backend.name,
            output_format=task.params.output_format,
            seed=task.params.seed,
            lean=self._lean_3d(task),
            in_memory=in_memory,
        )

    def _check_capabilities(self, task: Task3D) -> None:
        """Refuse, before queueing, what this server cannot make (a missing optional part of the backend)."""
        caps = self.backend.capabilities()
        texture, cutout = caps.get("texture"), caps.get("background_removal")
        params = task.params
        if texture and not texture.available and params.output_format == "glb" and not params.no_texture:
            raise ServiceError(
                501,
                f"Textured GLBs cannot be made on this server ({texture.detail}). Send `no_texture: true` for a "
                'vertex-coloured GLB, or `output_format: "stl"`.',
                code="texture_unavailable",
                param="no_texture",
            )
        drawn_first = task.mode == "text" and not self.backend.supports_text  # SANA draws on a plain background
        opaque = drawn_first or (task.image is not None and not has_real_alpha(task.image))
        if cutout and not cutout.available and opaque:
            raise ServiceError(
                501,
                f"This server cannot remove image backgrounds ({cutout.detail}). Send an image whose background "
                "is transparent (a PNG with alpha).",
                code="background_removal_unavailable",
                param="image",
            )

    def _lean_3d(self, task: Task3D) -> LeanRetry:
        """After CUDA out-of-memory: the same job without the texture bake (the largest peak), once."""
        textured = task.params.output_format == "glb" and not task.params.no_texture
        leaner = replace(task, params=replace(task.params, no_texture=True))
        what = "without texture" if textured else "after freeing GPU memory"
        return LeanRetry(what, lambda ctx: self._run_3d(leaner, ctx))

    def _run_3d(self, task: Task3D, ctx: JobContext) -> MeshArtifact:
        params, image = task.params, task.image
        if task.mode == "text" and task.prompt:
            ctx.stage("safety_prompt", 0.01)
            self._guard(self.safety.check_prompt, task.prompt, "prompt")
            if self.backend.supports_text:
                with self._gpu():
                    return self.backend.text_to_mesh(task.prompt, params, ScaledReporter(ctx, 0.02, 1.0))
            ctx.stage("text_to_image", 0.02)
            side = self.settings.imagegen_size or 0
            with self._gpu():
                image = self.imagegen.generate(
                    task.prompt, n=1, width=side, height=side, seed=params.seed, steps=self.settings.imagegen_steps
                )[0][0]
        assert image is not None  # to_task guarantees an image or a prompt
        start = TEXT_STAGE_SHARE if task.mode == "text" else 0.0
        ctx.stage("safety_image", start + 0.01)
        self._guard(self.safety.check_image, image, "image")
        with self._gpu():
            return self.backend.image_to_mesh(image, params, ScaledReporter(ctx, start + 0.02, 1.0))

    def _gpu(self) -> contextlib.AbstractContextManager[None]:
        """Hold the VRAM lease around a GPU stage (a no-op unless the plan says the services take turns)."""
        return self.lease.hold(timeout_s=self.settings.job_timeout_s)

    @staticmethod
    def _guard(check: Callable, item: str | Image.Image, what: str) -> None:
        decision = check(item)  # SafetyUnavailable propagates and fails the job as an error, never as a filter
        if decision.flagged:
            raise ContentFiltered(f"the {what} was classified as unsafe (score {decision.score:.3f})")

    async def wait(self, job: Job, is_disconnected: Disconnected | None) -> None:
        """Wait for a job; if the client goes away meanwhile, abandon the job so the GPU does not work for nobody."""
        done = asyncio.wrap_future(job.done)
        while not (await asyncio.wait({done}, timeout=self.settings.trellis_disconnect_poll_s))[0]:
            if is_disconnected is not None and await is_disconnected():
                log.info("client left; abandoning %s job %s", job.kind, job.id)
                self.queue.abandon(job)
                raise ServiceError(499, "The client closed the request.", code="client_closed_request")

    async def infer(self, request: InferRequest, is_disconnected: Disconnected | None = None) -> InferResult:
        """Run one 3D job to its end; a failure is raised as a `ServiceError` with the job's reason."""
        job = await self.submit_3d(request, in_memory=True)
        await self.wait(job, is_disconnected)
        self.queue.discard(job)
        if job.status == "succeeded" and isinstance(job.value, MeshArtifact):
            return InferResult(job.value, "SUCCESS")
        if job.status == "filtered":
            return InferResult(None, "CONTENT_FILTERED", job.seed or 0, job.backend, job.output_format, job.error)
        log.warning("infer job %s %s: %s", job.id, job.status, job.error)
        status, code = INFER_FAILURES.get(job.error_code or "", (500, "generation_failed"))
        retry = self.settings.trellis_retry_after_s if status == 503 else None
        raise ServiceError(status, f"3D generation failed: {job.error}", code=code, retry_after_s=retry)

    # --- text-to-image -------------------------------------------------------------------------------------
    async def generate_images(
        self, request: ImageGenerationRequest, is_disconnected: Disconnected | None = None
    ) -> ImageGenerationResponse:
        if not self.imagegen.enabled:
            raise ServiceError(503, self.imagegen.health.detail, code="imagegen_off")
        self.require("imagegen", "safety_prompt")
        side = self.settings.imagegen_size or 0
        width, height = parse_size(request.size) if request.size else (side, side)
        decision = await asyncio.to_thread(self._checked_prompt, request.prompt)
        if decision:
            raise ServiceError(
                400, "The prompt was classified as unsafe; rephrase it.", code="content_filtered", param="prompt"
            )
        seed, steps = resolve_seed(request.seed), request.steps or self.settings.imagegen_steps

        def work(ctx: JobContext, one_by_one: bool = False) -> list[tuple[Image.Image, int]]:
            ctx.stage("text_to_image", 0.1)
            draw = self.imagegen.generate_one_by_one if one_by_one else self.imagegen.generate
            with self._gpu():
                return draw(request.prompt, n=request.n, width=width, height=height, seed=seed, steps=steps)

        what = "one image at a time" if request.n > 1 else "after freeing GPU memory"
        lean = LeanRetry(what, lambda ctx: work(ctx, one_by_one=True))
        job = self.queue.submit("images", work, backend=self.imagegen.name, seed=seed, lean=lean)
        await self.wait(job, is_disconnected)
        self.queue.discard(job)
        if job.status != "succeeded":
            raise ServiceError(500, f"Image generation failed: {job.error}", code="generation_failed")
        encoded = await asyncio.to_thread(lambda: [(_png_b64(img), s) for img, s in job.value])
        data = [GeneratedImage(b64_json=b64, seed=s) for b64, s in encoded]
        return ImageGenerationResponse(created=int(time.time()), data=data, backend=self.imagegen.name)

    def _checked_prompt(self, prompt: str) -> bool:
        return self._prompt_decision(prompt, "prompt").flagged

    def _prompt_decision(self, text: str, what: str) -> Decision:
        """The prompt classifier's decision; a classifier that cannot answer is a 503, never a filter decision."""
        try:
            return self.safety.check_prompt(text)
        except SafetyUnavailable as e:
            raise ServiceError(
                503,
                f"Cannot check the {what}: {e}",
                code="safety_unavailable",
                retry_after_s=self.settings.trellis_retry_after_s,
            ) from e

    # --- moderation ----------------------------------------------------------------------------------------
    async def moderate(self, request: ModerationRequest) -> ModerationResponse:
        self.require("safety_prompt")
        texts = [request.input] if isinstance(request.input, str) else request.input
        results = []
        for text in texts:
            decision = await asyncio.to_thread(self._moderate_one, text)
            results.append(
                ModerationResult(
                    flagged=decision[0],
                    categories={MODERATION_CATEGORY: decision[0]},
                    category_scores={MODERATION_CATEGORY: decision[1]},
                )
            )
        model = self.safety.prompt.model_id or "off"
        return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=model, results=results)

    def _moderate_one(self, text: str) -> tuple[bool, float]:
        d = self._prompt_decision(text, "text")
        return d.flagged, round(d.score, 6)


@dataclass(frozen=True)
class InferResult:
    """A finished /v1/infer job: the artifact, or none when the safety check refused the input."""

    artifact: MeshArtifact | None
    finish_reason: FinishReason
    seed: int = 0
    backend: str = ""
    output_format: str = ""
    detail: str | None = None

    def response(self) -> InferResponse:
        """The NIM JSON answer: the file as base64 inside the artifact."""
        a = self.artifact
        data = base64.b64encode(a.data).decode() if a else ""
        return InferResponse(
            artifacts=[
                Artifact(
                    base64=data,
                    finishReason=self.finish_reason,
                    seed=a.seed if a else self.seed,
                    backend=a.backend if a else self.backend,
                    output_format=a.output_format if a else self.output_format,
                )
            ]
        )


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
