"""TRELLIS's low-VRAM mode (`place_per_stage`): only the running model is on the GPU, the pipeline makes its
tensors there, and the results are those of the resident pipeline.

Checked with a stand-in pipeline of plain modules (TRELLIS itself exists only in the GPU image). On CPU the
"GPU" is the meta device, which checks where every model is at each stage; the CUDA test (skipped without a GPU)
also checks the numbers and that peak memory holds one stage's weights, not all of them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from nim_trellis.backends.trellis import place_per_stage

STAGES = ("image_cond_model", "sparse_structure_flow_model", "slat_flow_model", "slat_decoder_mesh")


class StandInPipeline:
    """TRELLIS pipelines keep their models in `self.models` and create inputs on `self.device`."""

    def __init__(self, width: int) -> None:
        torch.manual_seed(0)
        self.models: dict[str, Any] = {name: nn.Linear(width, width, bias=False) for name in STAGES}
        self.models["rembg_session"] = object()  # not a module: left alone
        self.width = width
        self.seen: list[dict[str, str]] = []

    @property
    def device(self) -> torch.device:
        return next(self.models[STAGES[0]].parameters()).device

    def run(self) -> torch.Tensor:
        x = torch.ones(1, self.width, device=self.device)
        for name in STAGES:
            x = self.models[name](x)
            self.seen.append({n: next(self.models[n].parameters()).device.type for n in STAGES})
        return x


def test_only_the_running_stage_is_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Meta tensors hold no data, so moving back to the CPU cannot copy: move storage only; placement is the point.
    monkeypatch.setattr(nn.Linear, "to", lambda self, device: self.to_empty(device=device))
    pipe = StandInPipeline(8)
    place_per_stage(pipe, "meta")
    assert pipe.device == torch.device("meta")
    assert all(next(m.parameters()).device.type == "cpu" for n, m in pipe.models.items() if n in STAGES)
    with torch.inference_mode():  # the backend samples in inference mode; the weights must still move
        pipe.run()
    for stage, placement in zip(STAGES, pipe.seen, strict=True):
        assert placement == {n: ("meta" if n == stage else "cpu") for n in STAGES}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_per_stage_on_cuda_matches_resident_and_holds_one_stage() -> None:
    width = 8192  # 256 MiB of fp32 weights per stage
    resident = StandInPipeline(width)
    for model in resident.models.values():
        if isinstance(model, nn.Module):
            model.cuda()
    with torch.inference_mode():  # no autograd graph holding the resident weights after `del`
        expected = resident.run().cpu()
    del resident
    torch.cuda.empty_cache()
    per_stage = StandInPipeline(width)
    place_per_stage(per_stage, "cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        got = per_stage.run().cpu()
    stage_bytes = width * width * 4
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max(), (got - expected).abs().max()
    assert torch.cuda.max_memory_allocated() < 2 * stage_bytes  # one stage (and its moving-in), never all four
