"""Weight-only int8 LLM weights (the 24gb/32gb GPU memory profiles), checked on CPU with the tiny model: the
numbers stay close to the unquantised model's, the static engine serves them exactly like the eager one, and the
loading path quantises when the plan asks for 8-bit weights."""

from __future__ import annotations

import torch

from nim_llm.int8 import Int8Linear, is_int8, quantize_int8_, quantize_weight
from nim_llm.loading import load_model
from nim_llm.slots import SlotBatch
from nim_llm.startup import build_engine
from servicekit.vram import PLANS
from tests.llm.conftest import with_plan
from tests.llm.test_static_engine import _generate_each


def test_quantized_weight_is_within_half_a_step_of_the_original() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 32) * torch.linspace(0.01, 3.0, 64)[:, None]  # rows of very different ranges
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert (q.float() * scale[:, None] - weight).abs().le(scale[:, None] / 2 + 1e-6).all()


def test_int8_model_stays_close_to_the_original(make_settings) -> None:
    model = load_model(*with_plan(make_settings())).model
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(input_ids=ids).logits.float()
        count = quantize_int8_(model, "cpu")
        quantized = model(input_ids=ids).logits.float()
    layers = model.config.num_hidden_layers
    assert count == 7 * layers  # q, k, v, o, gate, up, down per layer; the LM head stays as it was
    assert is_int8(model) and isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)
    assert not isinstance(model.lm_head, Int8Linear)
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(1), quantized.flatten(1)).min()
    assert cosine > 0.99
    assert not torch.equal(reference, quantized)  # it really runs the int8 weights


def test_static_engine_serves_int8_weights_like_the_eager_engine(make_settings, monkeypatch) -> None:
    # The plan does not apply on CPU; hand the engine the 24gb one, so the loading path itself quantises.
    plan = PLANS["24gb"]
    eager = build_engine(make_settings(llm_engine="eager"), plan)
    static = build_engine(make_settings(llm_engine="static", llm_slot_tokens=256, llm_max_batch_size=4), plan)
    assert is_int8(eager.model) and is_int8(static.model) and isinstance(static._batch, SlotBatch)
    assert static._batch.step_fn.weights[0].sqkv is not None  # the static step reads the int8 scales
    prompts = [eager.tokenizer.encode(w) for w in ["a chair", "a red lamp on a long oak table", "hi", "ok then"]]
    budgets = [20, 9, 30, 4]
    results = _generate_each([eager, static], prompts, budgets)
    assert results[1] == results[0] and sum(count for _, count in results[0]) > 20
