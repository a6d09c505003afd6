"""Profile selection from the GPU's total memory, and what each profile's plan changes."""

from __future__ import annotations

import pytest

from config import Settings
from servicekit.vram import PLANS, LlmSize, VramPlan, choose_profile, is_cuda_oom, resolve_plan
from tests.vram.conftest import cuda_oom


@pytest.mark.parametrize(
    ("total_gib", "profile"),
    [(15.6, "16gb"), (23.5, "24gb"), (31.8, "32gb"), (47.5, "48gb"), (80, "unlimited"), (141, "unlimited")],
)
def test_choose_profile_by_card_class(total_gib: float, profile: str) -> None:
    chosen, reason = choose_profile(total_gib)
    assert chosen == profile
    assert f"{total_gib:.1f} GiB" in reason and reason.startswith("auto")


def test_choose_profile_warns_below_the_smallest_class() -> None:
    chosen, reason = choose_profile(11.6)
    assert chosen == "16gb" and "out-of-memory" in reason


def test_plan_16gb_is_the_leanest() -> None:
    plan = PLANS["16gb"]
    assert (plan.llm_weights, plan.llm_max_batch_size, plan.llm_max_context) == ("4bit", 4, 4096)
    assert plan.sana_placement == "offload" and plan.trellis_low_vram and plan.lease
    assert plan.texture_size == 512
    assert plan.lowered[0] == "4-bit LLM" and "texture 512" in plan.lowered


@pytest.mark.parametrize(
    ("profile", "weights", "low_vram", "lease", "texture"),
    [
        ("16gb", "4bit", True, True, 512),
        ("24gb", "8bit", True, True, 1024),
        ("32gb", "8bit", False, False, 1024),
        ("48gb", "bf16", False, False, 1024),
        ("unlimited", "bf16", False, False, None),
    ],
)
def test_plan_per_profile(profile: str, weights: str, low_vram: bool, lease: bool, texture: int | None) -> None:
    plan = PLANS[profile]  # type: ignore[index]
    assert (plan.llm_weights, plan.trellis_low_vram, plan.lease, plan.texture_size) == (
        weights,
        low_vram,
        lease,
        texture,
    )


def test_plans_grow_with_the_card() -> None:
    order = ["16gb", "24gb", "32gb", "48gb", "unlimited"]
    knobs = [len(PLANS[p].lowered) for p in order]  # type: ignore[index]
    assert knobs == sorted(knobs, reverse=True) and knobs[-1] == 0


def test_resolve_plan_auto_named_and_cpu() -> None:
    assert resolve_plan("auto", "cuda", total_gib=23.5).profile == "24gb"
    named = resolve_plan("16gb", "cuda:0", total_gib=80)
    assert named.profile == "16gb" and named.reason == "VRAM_PROFILE=16gb" and named.applies
    on_cpu = resolve_plan("16gb", "cpu")
    assert on_cpu.profile == "unlimited" and not on_cpu.applies and on_cpu.lowered == []
    assert "cpu" in on_cpu.reason


def test_resolve_plan_auto_without_cuda_changes_nothing() -> None:
    plan = resolve_plan("auto", "cuda")  # this machine has no CUDA
    assert plan.profile == "unlimited" and not plan.applies and "CUDA is not available" in plan.reason


def test_llm_size_caps_batch_context_and_slots() -> None:
    settings = Settings(_env_file=None, profile="gpu", hf_token=None, llm_max_context=8192, llm_slot_tokens=8192)
    assert PLANS["16gb"].llm_size(settings) == LlmSize(max_batch_size=4, max_context=4096, slot_tokens=4096)
    assert settings.llm_max_batch_size == 64  # the settings stay as they are
    as_set = LlmSize(max_batch_size=64, max_context=8192, slot_tokens=8192)
    assert PLANS["16gb"].not_applied().llm_size(settings) == PLANS["unlimited"].llm_size(settings) == as_set


def test_texture_is_capped_not_raised() -> None:
    assert PLANS["16gb"].texture(1024) == 512 and PLANS["16gb"].texture(256) == 256
    assert PLANS["unlimited"].texture(2048) == 2048


def test_quantization_config_per_weights() -> None:
    q4 = PLANS["16gb"].quantization_config()
    assert q4 is not None and q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4"
    assert PLANS["24gb"].quantization_config() is None and PLANS["24gb"].int8_llm  # int8 is ours, not bitsandbytes'
    assert not PLANS["24gb"].not_applied().int8_llm and not PLANS["16gb"].int8_llm
    assert PLANS["48gb"].quantization_config() is None
    assert PLANS["16gb"].not_applied().quantization_config() is None


def test_oom_advice_names_the_next_leaner_profile() -> None:
    assert "VRAM_PROFILE=16gb (now 24gb)" in PLANS["24gb"].oom_advice()
    assert "VRAM_PROFILE=48gb" in PLANS["unlimited"].oom_advice()
    assert "leanest" in PLANS["16gb"].oom_advice()


def test_health_fields() -> None:
    fields = VramPlan("16gb").health_fields()
    assert set(fields) == {"vram_profile", "vram_reason", "vram_applies", "vram_lowered"}


def test_is_cuda_oom_by_type() -> None:
    assert is_cuda_oom(cuda_oom())
    assert not is_cuda_oom(RuntimeError("CUDA out of memory"))  # the message alone does not count
