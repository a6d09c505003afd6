"""The `builtin:tiny-sana` text-to-image model: a random-weight SanaSprintPipeline built locally (no download)."""

from __future__ import annotations

from pathlib import Path

from nim_trellis.tiny_models import build_sana

TINY_SANA_DIR = "tiny-sana"


def ensure_tiny_sana(cache_dir: Path) -> Path:
    """Folder of the tiny pipeline under CACHE_DIR, built on first use."""
    return build_sana(cache_dir / TINY_SANA_DIR)
