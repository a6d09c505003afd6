"""Benchmark any OpenAI-compatible chat endpoint: TTFT, inter-token latency, decode and aggregate tok/s.

    python bench/llm_bench.py --url http://127.0.0.1:19002/v1 --concurrency 1,8,32,64

Every request streams with `stream_options.include_usage`, so token counts are the server's own. For each
concurrency level, `max(concurrency, --min-requests)` requests run with at most `concurrency` in flight. The
requests send `ignore_eos` (a vLLM/nim_llm extension; other servers ignore it), so each one decodes exactly
`--max-tokens` tokens and levels are comparable. Prints one JSON document. With `--weights-gb` (bytes read per
decode step) the single-stream figure is also given as a share of the memory-bandwidth roofline, the bandwidth
taken from `--bandwidth-gbs` or measured here with a large memory copy (only meaningful on the server's host).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

PROMPT = (
    "You are planning a 3D scene. Describe, in plain sentences, a cosy reading corner with an armchair, a "
    "floor lamp, a small side table, a bookshelf and a rug. Mention colours, materials and sizes."
)


@dataclass
class Sample:
    start: float
    first: float | None = None
    arrivals: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None


async def one_request(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    sample = Sample(time.perf_counter())
    async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
        if r.status_code != 200:
            sample.error = f"{r.status_code} {(await r.aread())[:200]!r}"
            return sample
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                sample.completion_tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                sample.first = sample.first or now
                sample.arrivals.append(now)
    return sample


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(concurrency: int, samples: list[Sample], wall_s: float) -> dict:
    ok = [s for s in samples if s.error is None and s.first is not None]
    ttft = [s.first - s.start for s in ok if s.first]
    itl = [b - a for s in ok for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]
    per_stream = [
        (s.completion_tokens - 1) / (s.arrivals[-1] - s.first)
        for s in ok
        if s.first and s.completion_tokens > 1 and s.arrivals[-1] > s.first
    ]
    tokens = sum(s.completion_tokens for s in ok)
    r = 4
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "errors": [s.error for s in samples if s.error][:3],
        "ttft_s": {"p50": _round(percentile(ttft, 0.5), r), "p95": _round(percentile(ttft, 0.95), r)},
        "inter_token_latency_s": {"p50": _round(percentile(itl, 0.5), r), "p95": _round(percentile(itl, 0.95), r)},
        "decode_tok_s_per_stream": _round(statistics.mean(per_stream) if per_stream else None, 2),
        "aggregate_tok_s": round(tokens / wall_s, 2),
        "completion_tokens": tokens,
        "wall_s": round(wall_s, 2),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def run_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int, timeout_s: float) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def gated() -> Sample:
            async with gate:
                return await one_request(client, url, model, max_tokens)

        start = time.perf_counter()
        samples = await asyncio.gather(*(gated() for _ in range(requests)))
        return summarize(concurrency, list(samples), time.perf_counter() - start)


def measure_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth of this host (read + write bytes per second), a rough STREAM copy."""
    import numpy as np

    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


async def main_async(args: argparse.Namespace) -> dict:
    url = args.url.rstrip("/")
    async with httpx.AsyncClient(timeout=30) as client:
        model = args.model or (await client.get(f"{url}/models")).json()["data"][0]["id"]
    await run_level(url, model, 1, 1, min(8, args.max_tokens), args.timeout_s)  # warm-up, not reported
    levels = []
    for c in args.concurrency:
        levels.append(await run_level(url, model, c, max(c, args.min_requests), args.max_tokens, args.timeout_s))
    single = next((lvl["decode_tok_s_per_stream"] for lvl in levels if lvl["concurrency"] == 1), None)
    report: dict = {
        "url": url,
        "model": model,
        "max_tokens": args.max_tokens,
        "prompt_chars": len(PROMPT),
        "single_stream_decode_tok_s": single,
        "levels": levels,
    }
    if args.weights_gb and single:
        bandwidth = args.bandwidth_gbs or measure_bandwidth_gbs()
        roofline = bandwidth / args.weights_gb
        report["roofline"] = {
            "bandwidth_gbs": round(bandwidth, 1),
            "weights_gb": args.weights_gb,
            "roofline_tok_s": round(roofline, 1),
            "share": round(single / roofline, 3),
        }
    return report


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:19002/v1", help="base URL including /v1")
    p.add_argument("--model", default=None, help="model name (default: the first of GET /models)")
    p.add_argument("--concurrency", default="1,8,32,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-tokens", type=int, default=64, help="tokens decoded per request")
    p.add_argument("--min-requests", type=int, default=4, help="fewest requests per level")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per-request timeout")
    p.add_argument("--weights-gb", type=float, default=None, help="model weight bytes read per step, in GB")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="memory bandwidth (default: measured)")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main_async(parse_args())), indent=2))
