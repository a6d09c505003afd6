"""The decode step of a Llama-family model over a static, slot-indexed KV cache: the engine's hot loop.

Row i of a decode batch is cache slot i (the scheduler keeps running sequences packed into the lowest slots),
so a step over `b` rows and `span` cached positions reads `k_cache[:b, :, :span]` as a view: no gather, no
copy. One decoder layer is written as a pure function of tensors, so `torch.compile` traces it once and every
layer reuses the compiled code (weights are arguments, not module attributes). The numerics follow
transformers' Llama (RMSNorm in fp32, rotate-half RoPE with the model's own rotary tables, grouped-query
attention); attention scores are taken in fp32.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from nim_llm.int8 import Int8Linear

log = logging.getLogger("nim_llm.llama_step")

SUPPORTED_TYPES = ("llama", "mistral")


class LayerWeights(NamedTuple):
    ln1: torch.Tensor
    wqkv: torch.Tensor  # q, k and v projections stacked: one matrix product instead of three
    wo: torch.Tensor
    ln2: torch.Tensor
    wgu: torch.Tensor  # gate and up projections stacked
    wd: torch.Tensor
    # Per-output-channel scales of int8 weights (`nim_llm/int8.py`); None for bf16 weights.
    sqkv: torch.Tensor | None = None
    so: torch.Tensor | None = None
    sgu: torch.Tensor | None = None
    sd: torch.Tensor | None = None


def unsupported_reason(model: Any) -> str | None:
    """Why the static step cannot run this model (None when it can)."""
    config = model.config
    if getattr(model, "is_quantized", False) or getattr(config, "quantization_config", None):
        return "quantized weights (bitsandbytes, ...) are not supported"
    if getattr(config, "model_type", "") not in SUPPORTED_TYPES:
        return f"model type {getattr(config, 'model_type', '?')!r} is not one of {SUPPORTED_TYPES}"
    if getattr(config, "sliding_window", None) or getattr(config, "attention_bias", False):
        return "sliding-window attention and attention biases are not supported"
    if getattr(config, "mlp_bias", False) or getattr(config, "hidden_act", "silu") != "silu":
        return "only bias-free SiLU MLPs are supported"
    return None


def layer_weights(layer: Any) -> LayerWeights:
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = [attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]
    weights = LayerWeights(
        layer.input_layernorm.weight,
        stack_in_place(qkv),
        attn.o_proj.weight,
        layer.post_attention_layernorm.weight,
        stack_in_place(gate_up),
        mlp.down_proj.weight,
    )
    if not isinstance(attn.o_proj, Int8Linear):
        return weights
    return weights._replace(
        sqkv=stack_in_place(qkv, "scale"),
        so=attn.o_proj.scale,
        sgu=stack_in_place(gate_up, "scale"),
        sd=mlp.down_proj.scale,
    )


@torch.no_grad()
def stack_in_place(linears: list[Any], attr: str = "weight") -> torch.Tensor:
    """One tensor holding `linears`' rows of `attr`; each module's tensor becomes a view of it (no extra memory),
    so the transformers forward (used for prefill) reads the same numbers."""
    stacked = torch.cat([getattr(linear, attr).data for linear in linears])
    start = 0
    for linear in linears:
        rows = getattr(linear, attr).shape[0]
        getattr(linear, attr).data = stacked[start : start + rows]
        start += rows
    return stacked


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight.T`, dequantising int8 weights by their per-channel scales (compiled into the step)."""
    if scale is None:
        return F.linear(x, weight)
    return F.linear(x, weight.to(x.dtype)) * scale


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE; x [b, heads, dim], cos/sin [b, 1, dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def make_decode_layer(n_heads: int, n_kv: int, head_dim: int, intermediate: int, eps: float, scaling: float):
    """One decoder layer for one new token per row; writes the row's key/value at its position."""
    group = n_heads // n_kv
    q_size, kv_size = n_heads * head_dim, n_kv * head_dim

    def decode_layer(
        x: torch.Tensor,  # [b, hidden]
        w: LayerWeights,
        k_cache: torch.Tensor,  # [slots, n_kv, slot_tokens, head_dim]
        v_cache: torch.Tensor,
        pos: torch.Tensor,  # [b] position of this token
        cos: torch.Tensor,  # [b, 1, head_dim]
        sin: torch.Tensor,
        mask: torch.Tensor,  # [b, span] True where a cached position may be attended
    ) -> torch.Tensor:
        b, span = x.shape[0], mask.shape[1]
        qkv = linear(rms_norm(x, w.ln1, eps), w.wqkv, w.sqkv)
        q = rope(qkv[:, :q_size].view(b, n_heads, head_dim), cos, sin)
        k = rope(qkv[:, q_size : q_size + kv_size].view(b, n_kv, head_dim), cos, sin)
        v = qkv[:, q_size + kv_size :].view(b, n_kv, head_dim)
        rows = torch.arange(b, device=x.device)
        k_cache[rows, :, pos] = k
        v_cache[rows, :, pos] = v
        keys, values = k_cache[:b, :, :span], v_cache[:b, :, :span]
        scores = torch.matmul(q.view(b, n_kv, group, head_dim), keys.transpose(-1, -2)).float() * scaling
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out = torch.matmul(probs, values).reshape(b, n_heads * head_dim)
        x = x + linear(out, w.wo, w.so)
        gate_up = linear(rms_norm(x, w.ln2, eps), w.wgu, w.sgu)
        return x + linear(F.silu(gate_up[:, :intermediate]) * gate_up[:, intermediate:], w.wd, w.sd)

    return decode_layer


class LlamaStep:
    """Static KV cache for `slots` sequences of up to `slot_tokens` tokens, and the decode forward over it."""

    def __init__(self, model: Any, slots: int, slot_tokens: int, compile: bool) -> None:
        config, inner = model.config, model.model
        self.model = model
        self.slots, self.slot_tokens = slots, slot_tokens
        n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        attn = inner.layers[0].self_attn
        scaling = float(getattr(attn, "scaling", head_dim**-0.5))
        eps = float(inner.layers[0].input_layernorm.variance_epsilon)
        self.weights = [layer_weights(layer) for layer in inner.layers]
        device, dtype = model.device, inner.embed_tokens.weight.dtype
        shape = (slots, n_kv, slot_tokens, head_dim)
        self.k_cache = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.weights]
        self.v_cache = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.weights]
        self.cos, self.sin = self._rotary_tables(inner, slot_tokens, device, dtype)
        layer = make_decode_layer(n_heads, n_kv, head_dim, config.intermediate_size, eps, scaling)
        if compile:  # a few specialisations (batch 1, span == slot_tokens, ...) each compile once at warm-up
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
            layer = torch.compile(layer, dynamic=True)
        self.decode_layer = layer

    @staticmethod
    def _rotary_tables(inner: Any, length: int, device: torch.device, dtype: torch.dtype):
        positions = torch.arange(length, device=device)[None]
        probe = torch.zeros(1, device=device, dtype=dtype)
        cos, sin = inner.rotary_emb(probe, positions)  # [1, length, head_dim], attention scaling included
        return cos[0], sin[0]

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k_cache, *self.v_cache))

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        """Logits [b, vocab] (fp32) for one new token per row; rows are slots 0..b-1."""
        inner = self.model.model
        x = inner.embed_tokens(ids)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        mask = torch.arange(span, device=ids.device)[None] <= pos[:, None]
        for w, k_cache, v_cache in zip(self.weights, self.k_cache, self.v_cache, strict=True):
            x = self.decode_layer(x, w, k_cache, v_cache, pos, cos, sin, mask)
        return self.model.lm_head(inner.norm(x)).float()

    def store_prefill(self, slot: int, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy a prefilled prompt's keys/values ([n_kv, length, head_dim] per layer) into `slot`."""
        for (keys, values), k_cache, v_cache in zip(layers, self.k_cache, self.v_cache, strict=True):
            k_cache[slot, :, : keys.shape[1]] = keys
            v_cache[slot, :, : values.shape[1]] = values

    def move_slot(self, src: int, dst: int, length: int) -> None:
        for cache in (*self.k_cache, *self.v_cache):
            cache[dst, :, :length] = cache[src, :, :length]
