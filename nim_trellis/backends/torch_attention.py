"""The `flash_attn` functions TRELLIS calls, served by PyTorch's own attention kernels.

TRELLIS's sparse attention (the structured-latent flow and the decoders) supports only two libraries:
`SPARSE_ATTN_BACKEND=xformers` or `flash_attn`. Both ship compiled extensions that load only with the exact torch
build they were made for: xformers 0.0.35, built for torch 2.10, imports beside torch 2.11 and then fails on its
first call, and DINOv2 picks it up whatever TRELLIS is told. PyTorch itself has the kernels: dense attention
through `scaled_dot_product_attention` (flash / memory-efficient on CUDA) and packed variable-length attention
through `torch.nn.attention.varlen.varlen_attn` (flash, CUDA, fp16/bf16). So with
`TRELLIS_SPARSE_ATTN_BACKEND=torch` (the default) this module is registered as `flash_attn` before TRELLIS is
imported, and TRELLIS runs unmodified on whatever torch the image has.

Only the six functions TRELLIS calls are provided, with flash-attn's argument order and shapes:
dense `[batch, seq, heads, dim]`, packed variable-length `[tokens, heads, dim]` with `cu_seqlens` offsets.
Where the varlen kernel cannot run (CPU, fp32, an old torch) the sequences are padded to one batch and masked,
which gives the same result with more memory traffic.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

FLASH_DTYPES = (torch.float16, torch.bfloat16)
MAX_FLASH_HEAD_DIM = 256


def install() -> ModuleType:
    """Register this module as `flash_attn` (replacing any real one for this process) and return it."""
    module = sys.modules[__name__]
    sys.modules["flash_attn"] = module
    return module


# --- dense: [batch, seq, heads, dim] ---------------------------------------------------------------------------
def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **unsupported: Any,
) -> torch.Tensor:
    _inference_only(dropout_p, unsupported)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=softmax_scale
    )
    return out.transpose(1, 2)


def flash_attn_kvpacked_func(q: torch.Tensor, kv: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    k, v = kv.unbind(dim=2)
    return flash_attn_func(q, k, v, *args, **kwargs)


def flash_attn_qkvpacked_func(qkv: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    q, k, v = qkv.unbind(dim=2)
    return flash_attn_func(q, k, v, *args, **kwargs)


# --- packed variable length: [tokens, heads, dim] --------------------------------------------------------------
def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **unsupported: Any,
) -> torch.Tensor:
    _inference_only(dropout_p, unsupported)
    if _varlen_kernel_fits(q, k, v, causal):
        from torch.nn.attention.varlen import varlen_attn

        scale = {} if softmax_scale is None else {"scale": softmax_scale}
        return varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), **scale)
    return padded_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), softmax_scale, causal
    )


def flash_attn_varlen_kvpacked_func(
    q: torch.Tensor, kv: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, *args: Any, **kw: Any
) -> torch.Tensor:
    k, v = kv.unbind(dim=1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, *args, **kw)


def flash_attn_varlen_qkvpacked_func(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, *args: Any, **kwargs: Any
) -> torch.Tensor:
    q, k, v = qkv.unbind(dim=1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, *args, **kwargs)


def padded_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Varlen attention as one padded, masked SDPA batch: any device and dtype."""
    batch_q, pos_q = _token_slots(cu_q, q.shape[0])
    batch_k, pos_k = _token_slots(cu_k, k.shape[0])
    n = cu_q.numel() - 1
    padded_q = q.new_zeros(n, max_q, *q.shape[1:])
    padded_k = k.new_zeros(n, max_k, *k.shape[1:])
    padded_v = v.new_zeros(n, max_k, *v.shape[1:])
    padded_q[batch_q, pos_q], padded_k[batch_k, pos_k], padded_v[batch_k, pos_k] = q, k, v
    lengths_k = (cu_k[1:] - cu_k[:-1]).to(q.device)
    mask = torch.arange(max_k, device=q.device)[None, :] < lengths_k[:, None]  # [n, max_k]: real keys
    mask = mask[:, None, None, :]
    if causal:  # flash-attn aligns the causal diagonal to the end of each sequence
        lengths_q = (cu_q[1:] - cu_q[:-1]).to(q.device)
        offset = (lengths_k - lengths_q)[:, None, None, None]
        rows = torch.arange(max_q, device=q.device)[None, None, :, None]
        cols = torch.arange(max_k, device=q.device)[None, None, None, :]
        mask = mask & (cols <= rows + offset)
    out = F.scaled_dot_product_attention(
        padded_q.transpose(1, 2), padded_k.transpose(1, 2), padded_v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)[batch_q, pos_q]


def _token_slots(cu_seqlens: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence index, position in its sequence) of every packed token."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    batch = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths, output_size=tokens)
    position = torch.arange(tokens, device=cu.device) - cu[:-1][batch]
    return batch, position


def _varlen_kernel_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> bool:
    return (
        not causal
        and q.is_cuda
        and q.dtype in FLASH_DTYPES
        and q.dtype == k.dtype == v.dtype
        and q.shape[-1] == v.shape[-1] <= MAX_FLASH_HEAD_DIM
        and q.shape[-1] % 8 == 0
        and _has_varlen()
    )


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _inference_only(dropout_p: float, unsupported: dict[str, Any]) -> None:
    extra = {k: v for k, v in unsupported.items() if v not in (None, False, (-1, -1))}
    if dropout_p or extra:
        raise NotImplementedError(
            f"PyTorch-kernel flash_attn serves inference only; got dropout_p={dropout_p}, {sorted(extra)}"
        )
