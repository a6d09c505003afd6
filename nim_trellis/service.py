"""Service logic behind the routers: model loading and health, and 3D work (`/v1/infer` and the jobs API);
text-to-image and moderation are `imaging.ImageService`, on the same queue.

Routers call these methods and nothing else. All GPU work goes through `JobQueue` (one worker); the async methods
only wait on job futures, so the event loop never blocks. Whether results can be saved under DATA_DIR is part of
readiness, and a job is refused (507) while they cannot (`servicekit/storage.py`). The GPU memory plan
(`servicekit/vram.py`) sets the texture size, SANA's placement and TRELLIS's low-VRAM mode, and whether GPU stages
take the VRAM lease (`servicekit/vram_lease.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from PIL import Image

from config import Settings
from nim_trellis.backends.base import Backend3D, Capability, MeshArtifact, ScaledReporter
from nim_trellis.backends.relief import has_real_alpha
from nim_trellis.imagegen.sana import SanaImageGenerator
from nim_trellis.imaging import ImageService
from nim_trellis.job import Job, JobContext, LeanRetry, SafetyRefused
from nim_trellis.job_store import JobRecord
from nim_trellis.jobs import JobQueue
from nim_trellis.protocol import (
    Artifact,
    BackendHealth,
    FinishReason,
    HealthResponse,
    InferRequest,
    InferResponse,
    JobCreated,
    JobStatus,
    Task3D,
)
from nim_trellis.safety import Decision, SafetyGate
from nim_trellis.workers import WorkerPool, visible_gpus, worker_count
from servicekit.errors import APIError
from servicekit.hub import ModelMissing
from servicekit.storage import StorageCheck
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
    "storage": (507, "storage_unavailable"),
}
OPTIONAL = ("texture", "background_removal")  # optional parts of the 3D backend: "off" never blocks readiness
TEXT_STAGE_SHARE = 0.3  # share of a text-mode job's progress spent before the 3D backend starts


def make_backend(settings: Settings, plan: VramPlan) -> Backend3D:
    if settings.backend_3d == "trellis":
        from nim_trellis.backends.trellis import TrellisBackend

        texture = plan.texture(settings.texture_size)
        return TrellisBackend(settings, texture_size=texture, low_vram=plan.applies and plan.trellis_low_vram)
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
        gpu_index: int | None = None,
    ) -> None:
        self.settings = settings
        self.vram = vram or plan_3d(settings)
        self.lease = lease_for(settings, self.vram, role="3d", gpu_index=gpu_index)
        self.backend = backend or make_backend(settings, self.vram)
        offload = self.vram.applies and self.vram.sana_placement == "offload"
        self.imagegen = imagegen or SanaImageGenerator(settings, offload=offload)
        self.safety = safety or SafetyGate(settings)
        self.storage = StorageCheck(settings.data_dir, settings.storage_min_free_mb, settings.storage_check_interval_s)
        self.backend_health = BackendHealth(state="loading", detail=f"loading {self.backend.name}")
        self.queue = JobQueue(
            max_queued=settings.jobs_queue_size,
            timeout_s=settings.job_timeout_s,
            retention_s=settings.job_retention_s,
            results_dir=settings.data_dir / "jobs",
            retry_after_s=settings.trellis_retry_after_s,
            oom_advice=self.vram.oom_advice(),
        )
        self.images = ImageService(self)
        remote = bool(settings.job_queue_url)  # workers join the queue on their own, on any host
        gpus = visible_gpus() if settings.trellis_workers != "1" and not remote else []
        count = 0 if remote else worker_count(settings.trellis_workers, len(gpus))
        # Several workers: 3D jobs run in worker processes (nim_trellis/workers.py), not in this one.
        uses_pool = remote or count > 1
        self.pool = WorkerPool(settings, settings.data_dir / "jobs", count, gpus) if uses_pool else None
        self._loader = threading.Thread(target=self.load_models, name="trellis-loader", daemon=True)

    # --- lifecycle and health ------------------------------------------------------------------------------
    def start(self) -> None:
        self.queue.start(take_back=self.pool is None)  # the pool owns the job store when there is one
        if self.pool is not None:
            self.pool.start()
        self._loader.start()  # in the background, so /v1/health/live answers at once

    def stop(self) -> None:
        self.queue.stop()
        if self.pool is not None:
            self.pool.stop()

    def load_models(self) -> None:
        started = time.monotonic()
        if self.pool is None:  # else each worker process loads its own
            self.load_backend()
        self.imagegen.load()
        self.safety.load()
        states = {name: h.state for name, h in self.components().items()}  # the reasons were logged where they arose
        log.info("model loading finished in %.1fs: %s", time.monotonic() - started, states)
        log.info("GPU memory plan %s (%s): %s", self.vram.profile, self.vram.reason, self.vram.lowered or "as set")

    def load_backend(self) -> None:
        try:
            self.backend.load()
            self.backend_health = BackendHealth(state="ready", detail=f"{self.backend.name} backend loaded")
        except ModelMissing as e:  # expected on an offline machine: one line, no traceback
            self.backend_health = BackendHealth(state="error", detail=f"{self.backend.name}: {e}")
            log.warning("3d: %s", self.backend_health.detail)
        except Exception as e:
            log.exception("3D backend %s failed to load", self.backend.name)
            self.backend_health = BackendHealth(state="error", detail=f"{self.backend.name}: {type(e).__name__}: {e}")

    def components(self) -> dict[str, BackendHealth]:
        backend_health = self.backend_health if self.pool is None else self.pool.backend_health(self.backend.name)
        parts = {
            "3d": backend_health,
            "imagegen": self.imagegen.health,
            "safety_prompt": self.safety.prompt.health,
            "safety_image": self.safety.image.health,
        }
        if backend_health.state == "ready":  # optional parts of the 3D backend, known once it has loaded
            for name, cap in self.capabilities().items():
                parts[name] = BackendHealth(state="ready" if cap.available else "off", detail=cap.detail)
        return parts

    def storage_health(self) -> BackendHealth:
        problem = self.storage.problem()
        if problem:
            return BackendHealth(state="error", detail=problem)
        return BackendHealth(state="ready", detail=f"DATA_DIR {self.settings.data_dir} is writable")

    def health(self) -> HealthResponse:
        """The ready body; checks the disk (cached), so routes call it off the event loop."""
        parts = self.components()
        storage = self.storage_health()
        fail_open = not self.settings.safety_fail_closed
        blocking = {
            name: h for name, h in parts.items() if h.state == "error" and not (fail_open and name.startswith("safety"))
        }
        if storage.state == "error":
            blocking["storage"] = storage
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
            storage=storage,
            queue_depth=self.queue.depth() + (self.pool.depth() if self.pool else 0),
            profile=self.settings.profile,
            workers=self.pool.workers() if self.pool else None,
            **self.vram.health_fields(),
        )

    def capabilities(self) -> dict[str, Capability]:
        """The 3D backend's optional parts: this process's backend, or a worker's when workers run the jobs."""
        return self.backend.capabilities() if self.pool is None else self.pool.capabilities()

    def require(self, *names: str) -> None:
        """503 with Retry-After unless the named components can serve (off components are the caller's concern)."""
        parts = self.components()
        for name in names:
            h = parts[name]
            if h.state == "loading":
                raise APIError(
                    503,
                    f"The {name} model is still loading; retry shortly.",
                    code="not_ready",
                    retry_after_s=self.settings.trellis_retry_after_s,
                )
            if h.state == "error" and name.startswith("safety") and self.settings.safety_fail_closed:
                clf = self.safety.prompt if name == "safety_prompt" else self.safety.image
                raise APIError(
                    503,
                    f"Cannot check the input: {clf.unavailable()}.",
                    code="safety_unavailable",
                    retry_after_s=self.settings.trellis_retry_after_s,
                )
            if h.state == "error" and not name.startswith("safety"):
                raise APIError(
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
        self.require_3d(task)
        return self.queue.submit(
            "3d",
            lambda ctx: self.run_3d(task, ctx),
            backend=self.backend.name,
            output_format=task.params.output_format,
            seed=task.params.seed,
            lean=self.lean_3d(task),
            in_memory=in_memory,
            durable=not in_memory,  # polled by id (`/v1/jobs`): its record must answer after a restart
            params={"mode": task.mode, **asdict(task.params)},
        )

    def require_3d(self, task: Task3D) -> None:
        """503 unless the models this 3D task needs can serve."""
        self.require("3d", "safety_prompt", "safety_image")
        if task.mode == "text" and not self.backend.supports_text:
            self.require("imagegen")
            if not self.imagegen.enabled:
                raise APIError(
                    503,
                    "Text mode needs a text-to-image model: set IMAGEGEN_MODEL (or "
                    "TRELLIS_TEXT_MODEL with BACKEND_3D=trellis), or send an image.",
                    code="text_mode_unavailable",
                    param="prompt",
                )

    def _check_capabilities(self, task: Task3D) -> None:
        """Refuse, before queueing, what this server cannot make (a missing optional part of the backend)."""
        caps = self.capabilities()
        texture, cutout = caps.get("texture"), caps.get("background_removal")
        params = task.params
        if texture and not texture.available and params.output_format == "glb" and not params.no_texture:
            raise APIError(
                501,
                f"Textured GLBs cannot be made on this server ({texture.detail}). Send `no_texture: true` for a "
                'vertex-coloured GLB, or `output_format: "stl"`.',
                code="texture_unavailable",
                param="no_texture",
            )
        drawn_first = task.mode == "text" and not self.backend.supports_text  # SANA draws on a plain background
        opaque = drawn_first or (task.image is not None and not has_real_alpha(task.image))
        if cutout and not cutout.available and opaque:
            raise APIError(
                501,
                f"This server cannot remove image backgrounds ({cutout.detail}). Send an image whose background "
                "is transparent (a PNG with alpha).",
                code="background_removal_unavailable",
                param="image",
            )

    def lean_3d(self, task: Task3D) -> LeanRetry:
        """After CUDA out-of-memory: the same job without the texture bake (the largest peak), once."""
        textured = task.params.output_format == "glb" and not task.params.no_texture
        leaner = replace(task, params=replace(task.params, no_texture=True))
        what = "without texture" if textured else "after freeing GPU memory"
        return LeanRetry(what, lambda ctx: self.run_3d(leaner, ctx))

    def run_3d(self, task: Task3D, ctx: JobContext) -> MeshArtifact:
        params, image = task.params, task.image
        if task.mode == "text" and task.prompt:
            ctx.stage("safety_prompt", 0.01)
            self._guard(self.safety.check_prompt, task.prompt, "prompt", ctx)
            if self.backend.supports_text:
                with self.gpu():
                    return self.backend.text_to_mesh(task.prompt, params, ScaledReporter(ctx, 0.02, 1.0))
            ctx.stage("text_to_image", 0.02)
            side = self.settings.imagegen_size or 0
            with self.gpu():
                image = self.imagegen.generate(
                    task.prompt, n=1, width=side, height=side, seed=params.seed, steps=self.settings.imagegen_steps
                )[0][0]
        assert image is not None  # to_task guarantees an image or a prompt
        start = TEXT_STAGE_SHARE if task.mode == "text" else 0.0
        ctx.stage("safety_image", start + 0.01)
        self._guard(self.safety.check_image, image, "image", ctx)
        with self.gpu():
            return self.backend.image_to_mesh(image, params, ScaledReporter(ctx, start + 0.02, 1.0))

    def gpu(self) -> contextlib.AbstractContextManager[None]:
        """Hold the VRAM lease around a GPU stage (a no-op unless the plan says the services take turns)."""
        return self.lease.hold(timeout_s=self.settings.job_timeout_s)

    def _guard(self, check: Callable[..., Decision], item: str | Image.Image, what: str, ctx: JobContext) -> None:
        decision = check(item)  # SafetyUnavailable propagates and fails the job as an error, never as a filter
        if decision.flagged:
            raise SafetyRefused(f"the {what} was classified as unsafe (score {decision.score:.3f})")
        broken = self.safety.prompt if what == "prompt" else self.safety.image
        if not decision.checked and broken.health.state != "off":  # allowed unchecked: the job says so
            ctx.job.note = "; ".join(n for n in (ctx.job.note, decision.note) if n)

    async def wait(self, job: Job, is_disconnected: Disconnected | None) -> None:
        """Wait for a job; if the client goes away meanwhile, abandon the job so the GPU does not work for nobody."""
        done = asyncio.wrap_future(job.done)
        while not (await asyncio.wait({done}, timeout=self.settings.trellis_disconnect_poll_s))[0]:
            if is_disconnected is not None and await is_disconnected():
                log.info("client left; abandoning %s job %s", job.kind, job.id)
                self.queue.abandon(job)
                raise APIError(499, "The client closed the request.", code="client_closed_request")

    async def infer(self, request: InferRequest, is_disconnected: Disconnected | None = None) -> InferResult:
        """Run one 3D job to its end; a failure is raised as a `APIError` with the job's reason."""
        if self.pool is not None:
            job = await self._infer_in_worker(request, is_disconnected)
        else:
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
        raise APIError(status, f"3D generation failed: {job.error}", code=code, retry_after_s=retry)

    async def _infer_in_worker(self, request: InferRequest, is_disconnected: Disconnected | None) -> Job:
        """`/v1/infer` with worker processes: a queued job like any other, waited on, its file read and removed."""
        record = await asyncio.to_thread(self._submit_to_pool, request)
        assert self.pool is not None
        try:
            done = await self.pool.wait(record.id, is_disconnected)
            job = Job.of(done)
            if job.status == "succeeded" and job.result_path is not None:
                data = await asyncio.to_thread(job.result_path.read_bytes)
                job.value = MeshArtifact(data, job.output_format, job.backend, job.seed or 0)  # type: ignore[arg-type]
            return job
        finally:
            await asyncio.to_thread(self.pool.discard, record.id)

    def _submit_to_pool(self, request: InferRequest) -> JobRecord:
        assert self.pool is not None
        task = self._checked_task(request)
        self.require_3d(task)
        return self.pool.submit(task, backend=self.backend.name)

    async def create_job(self, request: InferRequest) -> JobCreated:
        problem = await asyncio.to_thread(self.storage.problem)
        if problem:  # the result could not be kept: refuse now rather than fail after the GPU work
            raise APIError(507, f"Cannot accept jobs: {problem}", code="storage_unavailable")
        if self.pool is not None:
            record = await asyncio.to_thread(self._submit_to_pool, request)
            return JobCreated(id=record.id, status="queued", queue_position=self.pool.position(record))
        job = await self.submit_3d(request)
        return JobCreated(id=job.id, status=job.status, queue_position=self.queue.position(job))

    def job_status(self, job_id: str) -> JobStatus:
        if self.pool is not None:
            return self.pool.status(self.pool.get(job_id))
        return self.queue.status(self.queue.get(job_id))

    def cancel_job(self, job_id: str) -> JobStatus:
        if self.pool is not None:
            return self.pool.status(self.pool.cancel(job_id))
        return self.queue.status(self.queue.cancel(job_id))

    def job_result(self, job_id: str) -> ResultFile:
        """The finished job's file; 409 while it runs (or when it did not succeed), 404 once it has expired."""
        job = self.queue.get(job_id) if self.pool is None else Job.of(self.pool.get(job_id))
        if job.status != "succeeded" or job.result_path is None:
            raise APIError(
                409,
                f"Job {job_id} is {job.status}; a result exists only once it has succeeded.",
                code="job_not_finished",
                param="id",
            )
        if not job.result_path.exists():
            raise APIError(404, f"The result of job {job_id} has expired.", code="job_not_found", param="id")
        return ResultFile(
            job.result_path,
            str(job.media_type),
            f"{job.id}.{job.output_format}",
            {"X-Seed": str(job.seed), "X-Backend": job.backend},
        )


@dataclass(frozen=True)
class ResultFile:
    """A finished job's result as the route sends it."""

    path: Path
    media_type: str
    filename: str
    headers: dict[str, str]


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
