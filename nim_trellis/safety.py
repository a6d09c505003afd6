"""Safety classifiers: one for prompts (and the UI's scene text), one for images going to 3D.

A decision comes only from a classifier's scores: `flagged` when the summed score of the unsafe labels
(SAFETY_UNSAFE_LABELS) exceeds SAFETY_THRESHOLD. An exception is never read as a decision. One rule for every
safety check (moderation, prompts before images and 3D, images before 3D):
- a classifier that is turned off (its model setting empty) checks nothing, and says so (`Decision.note`);
- a classifier that cannot load or raises: SAFETY_FAIL_CLOSED decides: refuse (`SafetyUnavailable`, an error that
  names what is missing and how to get it, never a filter) or allow unchecked with a warning (`Decision.note`, also
  in the log and in `/v1/health/ready`).
A model that is neither on disk nor downloadable now is reported in one line, at once (`servicekit.hub`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from config import BUILTIN_TINY_IMAGE_CLASSIFIER, BUILTIN_TINY_PROMPT_CLASSIFIER, Settings
from nim_trellis import tiny_models
from nim_trellis.protocol import BackendHealth
from servicekit.hub import ModelMissing, loadable_source

log = logging.getLogger("nim_trellis.safety")

Kind = Literal["prompt", "image"]
TASKS: dict[Kind, str] = {"prompt": "text-classification", "image": "image-classification"}


class SafetyUnavailable(Exception):
    """A classifier is needed but not working, and the service is set to fail closed."""


@dataclass(frozen=True)
class Decision:
    flagged: bool
    score: float  # summed probability of the unsafe labels; 0 when the check was skipped
    checked: bool  # False when the classifier is off, or broken with fail-open
    note: str | None = None  # why it was not checked


class Classifier:
    """One transformers pipeline behind a lock (pipelines are not thread-safe)."""

    def __init__(self, kind: Kind, settings: Settings) -> None:
        self.kind, self.settings = kind, settings
        model = settings.safety_prompt_model if kind == "prompt" else settings.safety_image_model
        self.model_id = model or ""
        self.setting = f"SAFETY_{kind.upper()}_MODEL"
        self.problem = ""  # why it could not load, in words
        self.unsafe = {label.strip().lower() for label in settings.safety_unsafe_labels.split(",") if label.strip()}
        self.health = BackendHealth(
            state="loading" if self.model_id else "off",
            detail=f"loading {self.model_id}" if self.model_id else "no model configured",
        )
        self._pipe: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        if not self.model_id:
            return
        try:
            source = self._resolve()  # before importing transformers: a missing model is known in milliseconds
            from transformers import pipeline

            device = self.settings.imagegen_device or "cpu"
            task: Any = TASKS[self.kind]  # a plain str; transformers' overloads want literals
            self._pipe = pipeline(task, model=source, device=device, token=self.settings.token)
            self.health = BackendHealth(state="ready", detail=f"{self.model_id} on {device}")
        except ModelMissing as e:  # expected on an offline machine: one line, no traceback
            self._failed(str(e))
            log.warning("safety_%s: %s", self.kind, self.health.detail)
        except Exception as e:  # any load failure leaves the service live; the fail mode decides what follows
            log.exception("%s classifier %s failed to load", self.kind, self.model_id)
            self._failed(f"could not load {self.model_id}: {type(e).__name__}: {e}")

    def _resolve(self) -> str:
        cache: Path = self.settings.cache_dir
        if self.model_id == BUILTIN_TINY_PROMPT_CLASSIFIER:
            return str(tiny_models.build_prompt_classifier(cache / "tiny-prompt-classifier"))
        if self.model_id == BUILTIN_TINY_IMAGE_CLASSIFIER:
            return str(tiny_models.build_image_classifier(cache / "tiny-image-classifier"))
        return loadable_source(self.model_id, self.settings, self.setting)

    def _failed(self, problem: str) -> None:
        self.problem = problem
        mode = (
            "refusing work (SAFETY_FAIL_CLOSED=true)"
            if self.settings.safety_fail_closed
            else f"WARNING: {self.kind}s are NOT checked (SAFETY_FAIL_CLOSED=false)"
        )
        self.health = BackendHealth(state="error", detail=f"{problem}; {mode}")

    def unavailable(self) -> str:
        """Why this classifier cannot decide, what is missing and how to get it (or do without it)."""
        return (
            f"the {self.kind} safety classifier ({self.setting}={self.model_id}) is not loaded: "
            f"{self.problem or self.health.detail}. To get it: `python scripts/fetch_models.py` downloads a hub id "
            f"(where the hub is reachable), or set {self.setting} to a local folder; {self.setting}= (empty) turns "
            "this check off, SAFETY_FAIL_CLOSED=false allows unchecked work"
        )

    def unchecked(self) -> str:
        """Why an input passes without a decision (only where the settings allow it)."""
        if self.health.state == "off":
            return f"{self.kind} checks are off ({self.setting} is empty)"
        return f"{self.kind}s are NOT checked: {self.problem or self.health.detail} (SAFETY_FAIL_CLOSED=false)"

    def score(self, item: str | Image.Image) -> float:
        """Summed probability of the unsafe labels for one input."""
        kwargs: dict[str, Any] = {"top_k": None}
        if self.kind == "prompt":
            kwargs["truncation"] = True
        else:
            item = item.convert("RGB") if isinstance(item, Image.Image) else item
        with self._lock:
            scores = self._pipe(item, **kwargs)
        if scores and isinstance(scores[0], list):  # some pipelines nest one level per input
            scores = scores[0]
        return float(sum(s["score"] for s in scores if str(s["label"]).lower() in self.unsafe))


class SafetyGate:
    """Both classifiers plus the fail-open/fail-closed policy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prompt = Classifier("prompt", settings)
        self.image = Classifier("image", settings)

    def load(self) -> None:
        self.prompt.load()
        self.image.load()

    def check_prompt(self, text: str) -> Decision:
        return self._check(self.prompt, text)

    def check_image(self, image: Image.Image) -> Decision:
        return self._check(self.image, image)

    def _check(self, clf: Classifier, item: str | Image.Image) -> Decision:
        state = clf.health.state
        if state == "off":
            return Decision(flagged=False, score=0.0, checked=False, note=clf.unchecked())
        if state != "ready":
            if self.settings.safety_fail_closed:
                raise SafetyUnavailable(
                    clf.unavailable() if state == "error" else f"the {clf.kind} safety classifier is {state}"
                )
            log.warning("%s not checked: classifier %s (fail-open)", clf.kind, state)
            return Decision(flagged=False, score=0.0, checked=False, note=clf.unchecked())
        try:
            score = clf.score(item)
        except Exception as e:
            if self.settings.safety_fail_closed:
                raise SafetyUnavailable(f"the {clf.kind} safety classifier failed: {type(e).__name__}: {e}") from e
            log.exception("%s classifier failed; allowing (fail-open)", clf.kind)
            note = f"{clf.kind} not checked: the classifier failed ({type(e).__name__}: {e}; SAFETY_FAIL_CLOSED=false)"
            return Decision(flagged=False, score=0.0, checked=False, note=note)
        return Decision(flagged=score > self.settings.safety_threshold, score=score, checked=True)
