"""Text-to-image with SANA-Sprint through diffusers' `SanaSprintPipeline` (bf16 on GPU, 2 steps by default).

Loaded once and kept resident (or, with `offload`, in CPU memory with each part moved to the GPU only while it
runs: diffusers' `enable_model_cpu_offload`); called only from the worker thread. Latents are decoded one image at a
time (see `_decode`). Each image of a batch gets its
own seeded generator (seed, seed+1, ...), so any single image can be redrawn alone from the seed reported with it.
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from config import BUILTIN_TINY_SANA, Settings
from nim_trellis.imagegen.tiny import ensure_tiny_sana
from nim_trellis.protocol import MAX_SEED, BackendHealth
from servicekit.hub import ModelMissing, loadable_source
from servicekit.vram import free_gpu_memory

log = logging.getLogger("nim_trellis.imagegen")

DISTILLED_STEPS = 2  # SANA-Sprint's distilled schedule; other step counts need intermediate_timesteps=None


class SanaImageGenerator:
    def __init__(self, settings: Settings, *, offload: bool = False) -> None:
        self.settings = settings
        self.model_id = settings.imagegen_model or ""
        self.device = settings.imagegen_device or "cpu"
        self.offload = offload and self.device.startswith("cuda")
        self.name = "tiny-sana" if self.model_id == BUILTIN_TINY_SANA else f"sana-sprint:{self.model_id}"
        self.health = BackendHealth(
            state="loading" if self.model_id else "off",
            detail=f"loading {self.model_id}"
            if self.model_id
            else (
                "text-to-image is off; set IMAGEGEN_MODEL to a SANA-Sprint hub id or local folder "
                "(e.g. Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers) or upload images instead"
            ),
        )
        self._pipe: Any = None

    @property
    def enabled(self) -> bool:
        return bool(self.model_id)

    def load(self) -> None:
        if not self.model_id:
            return
        try:
            if self.model_id == BUILTIN_TINY_SANA:
                source = str(ensure_tiny_sana(self.settings.cache_dir))
            else:
                source = loadable_source(self.model_id, self.settings, "IMAGEGEN_MODEL")
            import torch
            from diffusers import SanaSprintPipeline

            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            pipe = SanaSprintPipeline.from_pretrained(source, dtype=dtype, token=self.settings.token)
            if self.offload:
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
            self._warm_up()
            where = f"{self.device}, offloaded when idle" if self.offload else self.device
            self.health = BackendHealth(state="ready", detail=f"{self.model_id} on {where} ({dtype})")
        except ModelMissing as e:  # expected on an offline machine: one line, no traceback
            self.health = BackendHealth(state="error", detail=str(e))
            log.warning("imagegen: %s", e)
        except Exception as e:  # leaves the service live but not ready, with the reason in health
            log.exception("text-to-image model %s failed to load", self.model_id)
            self.health = BackendHealth(
                state="error", detail=f"could not load {self.model_id}: {type(e).__name__}: {e}"
            )

    def _warm_up(self) -> None:
        """One image at the default size before readiness: a fresh process's first image pays CUDA's lazy kernel
        loading and library set-up (measured about 10 s for SANA at 1024² on an H200), not the user's first card.
        A warm-up that fails (out of GPU memory at this size) only costs that speed: requests have their own
        leaner retry and error messages, so the model stays available."""
        side = self.settings.imagegen_size or 0
        if not side:
            return
        try:
            self.generate("a wooden chair", n=1, width=side, height=side, seed=1, steps=self.settings.imagegen_steps)
        except Exception as e:
            log.warning("text-to-image warm-up failed (%s: %s); the first image will be slower", type(e).__name__, e)
            free_gpu_memory()

    def generate_one_by_one(
        self, prompt: str, *, n: int, width: int, height: int, seed: int, steps: int
    ) -> list[tuple[Image.Image, int]]:
        """The same images and seeds as `generate`, drawn one at a time (less memory; the leaner retry)."""
        images: list[tuple[Image.Image, int]] = []
        for i in range(n):
            one_seed = (seed + i - 1) % MAX_SEED + 1
            images += self.generate(prompt, n=1, width=width, height=height, seed=one_seed, steps=steps)
        return images

    def generate(
        self, prompt: str, *, n: int, width: int, height: int, seed: int, steps: int
    ) -> list[tuple[Image.Image, int]]:
        """`n` PNG-ready images and the seed of each."""
        import torch

        seeds = [(seed + i - 1) % MAX_SEED + 1 for i in range(n)]
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = {}
        if steps != DISTILLED_STEPS:
            kwargs["intermediate_timesteps"] = None
        if self.model_id == BUILTIN_TINY_SANA:
            kwargs["complex_human_instruction"] = None  # a 1 kB instruction prefix would dominate a tiny model's time
        with torch.inference_mode():
            latents = self._pipe(
                prompt=prompt,
                num_images_per_prompt=n,
                generator=generators,
                height=height,
                width=width,
                num_inference_steps=steps,
                use_resolution_binning=False,
                output_type="latent",
                **kwargs,
            ).images
            images = [self._decode(latents[i : i + 1]) for i in range(len(latents))]
        return list(zip(images, seeds, strict=True))

    def _decode(self, latent: Any) -> Image.Image:
        """One image from its latent. Done here, one at a time, rather than by the pipeline: decoding a batch of
        1024² images at once needs several GiB more, and the pipeline turns an out-of-memory in its decode into a
        warning followed by an unrelated error, which would hide it from the leaner retry."""
        vae = self._pipe.vae
        pixels = vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self._pipe.image_processor.postprocess(pixels, output_type="pil")[0]
