"""`check_tensor` with the behaviour of kaolin.utils.testing.check_tensor (kaolin 0.15-0.18)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _shape_matches(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(w is None or w == g for g, w in zip(got, want, strict=True))


def check_tensor(
    tensor: torch.Tensor,
    shape: Sequence[int | None] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    throw: bool = True,
) -> bool:
    """True when `tensor` has the given shape (None entries match any size), dtype and device.

    On a mismatch it raises ValueError (shape) or TypeError (dtype, device) when `throw`, else returns False.
    """
    if shape is not None and not _shape_matches(tuple(tensor.shape), tuple(shape)):
        if throw:
            raise ValueError(f"tensor shape is {tuple(tensor.shape)}, should be {tuple(shape)}")
        return False
    if dtype is not None and dtype != tensor.dtype:
        if throw:
            raise TypeError(f"tensor dtype is {tensor.dtype}, should be {dtype}")
        return False
    if device is not None and torch.device(device) != tensor.device:
        if throw:
            raise TypeError(f"tensor device is {tensor.device}, should be {device}")
        return False
    return True
