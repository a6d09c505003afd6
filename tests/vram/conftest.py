"""Fixtures for the GPU memory profile tests: the 3D tests' tiny-profile settings, and simulated CUDA OOM."""

from __future__ import annotations

import torch

from tests.trellis.conftest import make_settings, model_cache  # noqa: F401  (fixtures shared with tests/trellis)


def cuda_oom() -> torch.cuda.OutOfMemoryError:
    """The error torch raises when CUDA runs out of memory (the class exists in CPU builds too)."""
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
