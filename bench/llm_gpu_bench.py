"""Benchmark the LLM engine on a GPU with the exact Llama-3.1-8B architecture and random bf16 weights.

    python bench/llm_gpu_bench.py                      # in-process: the engine alone
    python bench/llm_gpu_bench.py --http               # also through the real HTTP server (bench/llm_bench.py)
    python bench/llm_gpu_bench.py --engine eager       # the transformers-forward engine, for comparison

Nothing is downloaded: the model is built from `LlamaConfig` directly on the GPU (decode speed does not depend
on weight values) with a word-level tokenizer covering its 128,256 ids, so every generated token is text.
Prints one JSON document: start-up (build, compile + capture), TTFT for a 512-token prompt, single-stream
decode tok/s, aggregate tok/s and latency percentiles per concurrency, peak GPU memory, and the single-stream
figure as a share of the memory-bandwidth roofline (weight bytes read per step / measured copy bandwidth, and
the H200's 4.8 TB/s data-sheet figure).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from nim_llm.engine import Engine
from nim_llm.sampling import SamplingParams
from nim_llm.sequence import ErrorEvent, FinishEvent, TokenEvent

ROOT = Path(__file__).resolve().parent.parent

DATASHEET_GBS = 4800.0
EOS_IDS = [128001, 128008, 128009]


def llama31_8b_config(smoke: bool = False):
    from transformers import LlamaConfig

    small = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2} if smoke else {}
    shape = dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=EOS_IDS,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )  # fmt: skip
    return LlamaConfig(**(shape | small))


def random_model(device: str, smoke: bool):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama31_8b_config(smoke), dtype=torch.bfloat16)
    return model.eval()


def word_tokenizer():
    """Ids 0..128255 are words `w0`, `w1`, ...; Llama-3's special tokens sit at their real ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from nim_llm.tiny import CHAT_TEMPLATE

    specials = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>",
                128007: "<|end_header_id|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>"}  # fmt: skip
    vocab = {specials.get(i, f"w{i}"): i for i in range(128256)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[128000], eos_token=specials[128009], pad_token=specials[128001],
        chat_template=CHAT_TEMPLATE, additional_special_tokens=[specials[i] for i in (128006, 128007, 128008)],
    )  # fmt: skip


def build_engine(args: argparse.Namespace) -> tuple[Engine, dict]:
    t0 = time.perf_counter()
    cuda = not args.smoke
    model, tokenizer = random_model("cuda" if cuda else "cpu", args.smoke), word_tokenizer()
    synchronize()
    built = time.perf_counter() - t0
    batch, warm = None, 0.0
    if args.engine == "static":
        from nim_llm.slots import SlotBatch

        compile = cuda and not args.no_compile
        batch = SlotBatch(model, slots=args.slots, slot_tokens=args.slot_tokens, compile=compile, cuda_graphs=cuda)
        warm = batch.warm_up()
    return new_engine(model, tokenizer, batch, args), {
        "build_model_s": round(built, 1),
        "compile_and_capture_s": round(warm, 1),
    }


def new_engine(model, tokenizer, batch, args: argparse.Namespace) -> Engine:
    return Engine(
        model, tokenizer, max_batch_size=args.slots, max_queue=4096, max_context=args.slot_tokens,
        request_timeout_s=600, idle_wait_s=0.05, grammar_cache_size=4, json_max_close_tokens=512,
        model_id="random-llama-3.1-8b", batch=batch,
    )  # fmt: skip


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_requests(engine: Engine, prompts: list[list[int]], max_tokens: int) -> dict:
    """Submit all prompts at once; per request the arrival time of each token event and the finish event."""
    arrivals: list[list[float]] = [[] for _ in prompts]
    finishes: list[FinishEvent | None] = [None] * len(prompts)
    done = threading.Semaphore(0)

    def sink_for(i: int):
        def sink(event) -> None:
            if isinstance(event, TokenEvent):
                arrivals[i].append(time.perf_counter())
            elif isinstance(event, FinishEvent | ErrorEvent):
                finishes[i] = event if isinstance(event, FinishEvent) else None
                done.release()

        return sink

    params = [SamplingParams(max_tokens, temperature=0.7, seed=i, ignore_eos=True) for i in range(len(prompts))]
    start = time.perf_counter()
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        engine.submit(prompt, p, sink_for(i))
    for _ in prompts:
        done.acquire()
    wall = time.perf_counter() - start
    ok = [f for f in finishes if f is not None]
    ttft = [f.first_token_s - f.submitted_s for f in ok if f.first_token_s]
    itl = [b - a for times in arrivals for a, b in itertools.pairwise(times)]
    per_stream = [(len(t) - 1) / (t[-1] - t[0]) for t in arrivals if len(t) > 1 and t[-1] > t[0]]
    tokens = sum(f.completion_tokens for f in ok)
    return {
        "concurrency": len(prompts),
        "errors": len(prompts) - len(ok),
        "aggregate_tok_s": round(tokens / wall, 1),
        "decode_tok_s_per_stream": round(statistics.mean(per_stream), 1) if per_stream else None,
        "ttft_s": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95)},
        "inter_token_latency_s": {"p50": pct(itl, 0.5), "p95": pct(itl, 0.95)},
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
    }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 5)


def random_prompt(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128000, (length,), generator=g).tolist()


def greedy_check(engine: Engine, steps: int = 12) -> dict:
    """Greedy tokens from the engine versus full transformers forwards of the same model (no cache)."""
    prompt = random_prompt(48, 7)
    text: list[str] = []
    done = threading.Event()

    def sink(event) -> None:
        if isinstance(event, TokenEvent):
            text.append(event.text)
        else:
            done.set()

    engine.submit(prompt, SamplingParams(steps, temperature=0.0, ignore_eos=True), sink)
    done.wait(120)
    got = [int(w) for w in re.findall(r"w(\d+)", "".join(text))]  # word-level tokenizer: id i is "w<i>"
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            logits = engine.model(input_ids=torch.tensor([ids], device=engine.model.device)).logits[0, -1]
            ids.append(int(logits.argmax()))
    want = ids[len(prompt) :]
    same = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return {"tokens": steps, "matching_prefix": same, "engine": got, "reference": want}


def step_only(engine: Engine, sizes: tuple[int, ...] = (1, 8, 64, 128), span: int = 512) -> dict:
    """The hot loop alone: replays of one captured decode graph, no scheduler, sampling or text."""
    graphs = getattr(engine._batch, "_graphs", {})
    out = {}
    for b in sizes:
        if (b, span) not in graphs:
            continue
        graph = graphs[(b, span)][0]
        for _ in range(5):
            graph.replay()
        synchronize()
        t = time.perf_counter()
        for _ in range(50):
            graph.replay()
        synchronize()
        step_s = (time.perf_counter() - t) / 50
        out[f"batch_{b}"] = {"step_ms": round(step_s * 1e3, 3), "tok_s": round(b / step_s, 1)}
    return {"span": span, **out}


def copy_bandwidth_gbs() -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 10 / (time.perf_counter() - t) / 1e9


def in_process(engine: Engine, args: argparse.Namespace) -> dict:
    run_requests(engine, [random_prompt(32, 0)], 16)  # first-request effects, not reported
    ttfts = [run_requests(engine, [random_prompt(512, s)], 1)["ttft_s"]["p50"] for s in range(5)]
    levels = [
        run_requests(engine, [random_prompt(args.prompt_tokens, 100 + i) for i in range(c)], args.max_tokens)
        for c in args.concurrency
    ]
    single = next((lvl["decode_tok_s_per_stream"] for lvl in levels if lvl["concurrency"] == 1), None)
    return {"ttft_512_s": statistics.median(ttfts), "single_stream_decode_tok_s": single, "levels": levels}


def through_http(engine: Engine, args: argparse.Namespace) -> dict:
    """The same model and batch behind the real server (a fresh engine: the server starts and warms it)."""
    import httpx
    import uvicorn

    from config import Settings
    from nim_llm.app import create_app

    settings = Settings(_env_file=None, profile="gpu", api_key=None, hf_token=None, llm_warmup_tokens=4)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), port=args.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{args.port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    cmd = [sys.executable, str(ROOT / "bench" / "llm_bench.py"), "--url", url, "--max-tokens", str(args.max_tokens),
           "--concurrency", ",".join(map(str, args.concurrency)), "--weights-gb", "16.06",
           "--bandwidth-gbs", str(DATASHEET_GBS)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.http_timeout_s)
    server.should_exit = True
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["static", "eager"], default="static")
    p.add_argument("--no-compile", action="store_true", help="CUDA graphs of the eager step, no torch.compile")
    p.add_argument("--slots", type=int, default=128, help="batch slots (LLM_MAX_BATCH_SIZE)")
    p.add_argument("--slot-tokens", type=int, default=2048, help="KV tokens per slot (LLM_SLOT_TOKENS)")
    p.add_argument("--concurrency", default="1,8,32,64,128", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--http", action="store_true", help="also benchmark through the HTTP server")
    p.add_argument("--port", type=int, default=19002)
    p.add_argument("--http-timeout-s", type=float, default=400)
    p.add_argument("--coordinate-descent", action="store_true", help="Inductor coordinate-descent tuning")
    p.add_argument("--smoke", action="store_true", help="a 2-layer model on CPU: checks this script, no figures")
    args = p.parse_args()

    if args.coordinate_descent:
        torch._inductor.config.coordinate_descent_tuning = True
    t0 = time.perf_counter()
    engine, startup = build_engine(args)
    engine.start()
    startup["total_s"] = round(time.perf_counter() - t0, 1)
    gpu = torch.cuda.get_device_name() if not args.smoke else "cpu smoke"
    report: dict = {"gpu": gpu, "torch": torch.__version__, "engine": args.engine,
                    "compile": args.engine == "static" and not args.no_compile, "slots": args.slots,
                    "slot_tokens": args.slot_tokens, "prompt_tokens": args.prompt_tokens,
                    "max_tokens": args.max_tokens, "coordinate_descent": args.coordinate_descent,
                    "startup": startup}  # fmt: skip
    report["greedy_check"] = greedy_check(engine)
    report["in_process"] = in_process(engine, args)
    report["step_only"] = step_only(engine)
    weights_gb = sum(t.numel() * t.element_size() for t in engine.model.parameters()) / 1e9
    step_gb = weights_gb - engine.model.model.embed_tokens.weight.numel() * 2 / 1e9  # embeddings: one row read
    measured = copy_bandwidth_gbs() if not args.smoke else DATASHEET_GBS
    single = report["in_process"]["single_stream_decode_tok_s"] or 0.0
    bare = report["step_only"].get("batch_1", {}).get("tok_s", 0.0)
    report["roofline"] = {
        "step_only_share_of_measured": round(bare / (measured / step_gb), 3),
        "bytes_per_step_gb": round(step_gb, 2),
        "copy_bandwidth_gbs": round(measured, 0),
        "roofline_tok_s_measured_bw": round(measured / step_gb, 1),
        "roofline_tok_s_datasheet": round(DATASHEET_GBS / step_gb, 1),
        "share_of_measured": round(single / (measured / step_gb), 3),
        "share_of_datasheet": round(single / (DATASHEET_GBS / step_gb), 3),
    }
    report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1) if not args.smoke else None
    engine.stop()
    if args.http:
        report["http"] = through_http(new_engine(engine.model, engine.tokenizer, engine._batch, args), args)
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
