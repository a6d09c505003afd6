"""Text-to-image (OpenAI Images) and moderation (OpenAI Moderations) of the 3D service.

Images go through the service's one GPU work queue; both pass the prompt classifier, whose rule is the one of
every safety check (`safety.py`): a classifier that cannot answer is a 503 naming what is missing, never a filter
decision, unless the settings allow unchecked work, and then the answer says it was not checked. Moderation runs
off the event loop, all inputs of a call in one worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from typing import TYPE_CHECKING

from PIL import Image

from nim_trellis.job import JobContext, LeanRetry
from nim_trellis.protocol import (
    GeneratedImage,
    ImageGenerationRequest,
    ImageGenerationResponse,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    check_prompt_length,
    parse_size,
    resolve_seed,
)
from nim_trellis.safety import Classifier, Decision, SafetyUnavailable
from servicekit.errors import APIError

if TYPE_CHECKING:
    from nim_trellis.service import Disconnected, TrellisService

MODERATION_CATEGORY = "sexual"  # the classifiers we use detect sexual content only


class ImageService:
    def __init__(self, core: TrellisService) -> None:
        self.core = core

    async def generate_images(
        self, request: ImageGenerationRequest, is_disconnected: Disconnected | None = None
    ) -> ImageGenerationResponse:
        check_prompt_length(request.prompt, self.core.settings)
        if not self.core.imagegen.enabled:
            raise APIError(503, self.core.imagegen.health.detail, code="imagegen_off")
        self.core.require("imagegen", "safety_prompt")
        side = self.core.settings.imagegen_size or 0
        width, height = parse_size(request.size) if request.size else (side, side)
        decision = await asyncio.to_thread(self._checked_prompt, request.prompt)
        if decision:
            raise APIError(
                400, "The prompt was classified as unsafe; rephrase it.", code="content_filtered", param="prompt"
            )
        seed, steps = resolve_seed(request.seed), request.steps or self.core.settings.imagegen_steps

        def work(ctx: JobContext, one_by_one: bool = False) -> list[tuple[Image.Image, int]]:
            ctx.stage("text_to_image", 0.1)
            draw = self.core.imagegen.generate_one_by_one if one_by_one else self.core.imagegen.generate
            with self.core.gpu():
                return draw(request.prompt, n=request.n, width=width, height=height, seed=seed, steps=steps)

        what = "one image at a time" if request.n > 1 else "after freeing GPU memory"
        lean = LeanRetry(what, lambda ctx: work(ctx, one_by_one=True))
        job = self.core.queue.submit("images", work, backend=self.core.imagegen.name, seed=seed, lean=lean)
        await self.core.wait(job, is_disconnected)
        self.core.queue.discard(job)
        if job.status != "succeeded":
            raise APIError(500, f"Image generation failed: {job.error}", code="generation_failed")
        encoded = await asyncio.to_thread(lambda: [(_png_b64(img), s) for img, s in job.value])
        data = [GeneratedImage(b64_json=b64, seed=s) for b64, s in encoded]
        return ImageGenerationResponse(created=int(time.time()), data=data, backend=self.core.imagegen.name)

    def _checked_prompt(self, prompt: str) -> bool:
        return self._prompt_decision(prompt, "prompt").flagged

    def _prompt_decision(self, text: str, what: str) -> Decision:
        """The prompt classifier's decision; a classifier that cannot answer is a 503, never a filter decision."""
        try:
            return self.core.safety.check_prompt(text)
        except SafetyUnavailable as e:
            raise APIError(
                503,
                f"Cannot check the {what}: {e}",
                code="safety_unavailable",
                retry_after_s=self.core.settings.trellis_retry_after_s,
            ) from e

    async def moderate(self, request: ModerationRequest) -> ModerationResponse:
        texts = request.texts(self.core.settings)
        self.core.require("safety_prompt")
        decisions = await asyncio.to_thread(lambda: [self._prompt_decision(text, "text") for text in texts])
        unchecked = next((d for d in decisions if not d.checked), None)
        return ModerationResponse(
            id=f"modr-{uuid.uuid4().hex}",
            model=_answered_by(self.core.safety.prompt, checked=unchecked is None),
            results=[_moderation_result(d) for d in decisions],
            warning=unchecked.note if unchecked else None,
        )


def _answered_by(clf: Classifier, *, checked: bool) -> str:
    """The classifier that decided; never its name on an answer it did not give."""
    if checked:
        return clf.model_id
    return "off" if clf.health.state == "off" else "unchecked"


def _moderation_result(d: Decision) -> ModerationResult:
    scores = {MODERATION_CATEGORY: round(d.score, 6)} if d.checked else {}
    return ModerationResult(
        flagged=d.flagged, categories={MODERATION_CATEGORY: d.flagged}, category_scores=scores, checked=d.checked
    )


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
