"""Latency of the 3D service: per stage and end to end, for `/v1/infer` and the jobs API, at several concurrencies.

    python bench/studio_bench.py --url http://127.0.0.1:8000 --concurrency 1,4
    python bench/studio_bench.py --local            # relief in-process, no HTTP (pin with `taskset -c 0`)

Prints one JSON object. Stage times come from the server's own histograms (`/v1/metrics`, delta over the run)
and, for jobs, from polling each job's `stage` field. Works against any URL that speaks this service's API
(the TRELLIS NIM answers `/v1/infer` only; pass `--no-jobs` for it).
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

POLL_S = 0.01
RELIEF_TARGET_S = 0.5


def test_image(size: int) -> Image.Image:
    """A deterministic RGBA object: textured disc plus a bar on transparency."""
    rng = np.random.default_rng(0)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    m = size // 8
    draw.ellipse((m, m, size - m, size - m), fill=(190, 60, 40, 255))
    draw.rectangle((size // 2 - m // 2, m // 3, size // 2 + m // 2, size - m // 3), fill=(40, 150, 70, 255))
    arr = np.asarray(img).copy()
    noise = rng.integers(-20, 20, (*arr.shape[:2], 3))
    arr[..., :3] = np.clip(arr[..., :3].astype(int) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGBA")


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(values),
        "mean_s": round(statistics.fmean(values), 4),
        "p50_s": round(pick(0.5), 4),
        "p90_s": round(pick(0.9), 4),
        "min_s": round(ordered[0], 4),
        "max_s": round(ordered[-1], 4),
    }


def stage_sums(client: httpx.Client) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's stage histogram per stage."""
    out: dict[str, list[float]] = {}
    for line in client.get("/v1/metrics").text.splitlines():
        for part, idx in (("trellis_stage_duration_seconds_sum{", 0), ("trellis_stage_duration_seconds_count{", 1)):
            if line.startswith(part):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                out.setdefault(stage, [0.0, 0.0])[idx] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_delta(before: dict, after: dict) -> dict[str, float]:
    means = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            means[stage] = round((total - t0) / (count - c0), 4)
    return means


def run_infer(client: httpx.Client, body: dict) -> float:
    start = time.perf_counter()
    resp = client.post("/v1/infer", json=body)
    resp.raise_for_status()
    reason = resp.json()["artifacts"][0]["finishReason"]
    if reason != "SUCCESS":
        raise RuntimeError(f"infer finished with {reason}")
    return time.perf_counter() - start


def run_job(client: httpx.Client, body: dict) -> dict[str, Any]:
    """End-to-end time of one job, the time from submit until it runs (upload + queue) and client-observed
    stage durations."""
    start = time.perf_counter()
    created = client.post("/v1/jobs", json=body)
    created.raise_for_status()
    job_id = created.json()["id"]
    stages: dict[str, float] = {}
    current, since, started = None, start, None
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        now = time.perf_counter()
        if status["status"] != "queued" and started is None:
            started = now
        if status["stage"] != current:
            if current:
                stages[current] = stages.get(current, 0.0) + now - since
            current, since = status["stage"], now
        if status["status"] in ("succeeded", "failed", "cancelled", "filtered"):
            break
        time.sleep(POLL_S)
    if status["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {status['status']}: {status['error']}")
    client.get(f"/v1/jobs/{job_id}/result").raise_for_status()
    end = time.perf_counter()
    return {"total": end - start, "wait": (started or end) - start, "stages": stages}


def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body: dict[str, Any] = {"output_format": args.output_format, "no_texture": args.no_texture, "seed": 1}
    body.update({"prompt": args.prompt} if args.prompt else {"image": data_uri(test_image(args.size))})
    result: dict[str, Any] = {
        "url": args.url,
        "input": args.prompt or f"{args.size}x{args.size} RGBA PNG",
        "output_format": args.output_format,
        "no_texture": args.no_texture,
    }
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        ready = client.get("/v1/health/ready")
        result["ready"] = ready.json() if ready.headers.get("content-type", "").startswith("application/json") else {}
        run_infer(client, body)  # warm-up, not counted
        for conc in args.concurrency:
            n = max(args.requests, conc)
            before = stage_sums(client)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                lat = list(pool.map(lambda _: run_infer(client, body), range(n)))
            wall = time.perf_counter() - t0
            result.setdefault("infer", {})[str(conc)] = {
                **summary(lat),
                "throughput_per_s": round(n / wall, 3),
                "server_stage_mean_s": stage_delta(before, stage_sums(client)),
            }
            if args.no_jobs:
                continue
            before = stage_sums(client)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                jobs = list(pool.map(lambda _: run_job(client, body), range(n)))
            wall = time.perf_counter() - t0
            names = sorted({s for j in jobs for s in j["stages"]})
            result.setdefault("jobs", {})[str(conc)] = {
                "end_to_end": summary([j["total"] for j in jobs]),
                "submit_to_start": summary([j["wait"] for j in jobs]),
                "throughput_per_s": round(n / wall, 3),
                "client_stage_mean_s": {
                    s: round(statistics.fmean(j["stages"].get(s, 0.0) for j in jobs), 4) for s in names
                },
                "server_stage_mean_s": stage_delta(before, stage_sums(client)),
            }
    return result


def bench_local(args: argparse.Namespace) -> dict[str, Any]:
    """Relief in this process: the geometry and export cost without HTTP, base64 or the queue."""
    from config import Settings
    from nim_trellis.backends.base import MeshParams
    from nim_trellis.backends.relief import ReliefBackend

    class Stages:
        def __init__(self) -> None:
            self.marks: list[tuple[str, float]] = []

        def stage(self, name: str, progress: float) -> None:
            self.marks.append((name, time.perf_counter()))

    backend = ReliefBackend(Settings(_env_file=None))
    image = test_image(args.size)
    params = MeshParams(
        seed=1,
        ss_steps=12,
        slat_steps=12,
        ss_cfg=7.5,
        slat_cfg=3.0,
        no_texture=args.no_texture,
        output_format=args.output_format,
    )
    backend.image_to_mesh(image, params, Stages())  # warm-up (imports, caches)
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {}
    size = 0
    for _ in range(args.requests):
        rec = Stages()
        start = time.perf_counter()
        size = len(backend.image_to_mesh(image, params, rec).data)
        end = time.perf_counter()
        totals.append(end - start)
        marks = [*rec.marks, ("end", end)]
        for (name, t), (_, t_next) in itertools.pairwise(marks):
            per_stage.setdefault(name, []).append(t_next - t)
    return {
        "mode": "local relief",
        "input": f"{args.size}x{args.size} RGBA",
        "cpus": len(os.sched_getaffinity(0)),
        "output_format": args.output_format,
        "no_texture": args.no_texture,
        "bytes": size,
        "end_to_end": summary(totals),
        "stage_mean_s": {k: round(statistics.fmean(v), 4) for k, v in per_stage.items()},
        "target_s": RELIEF_TARGET_S,
        "meets_target": statistics.median(totals) <= RELIEF_TARGET_S,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--requests", type=int, default=8, help="requests per concurrency level")
    p.add_argument("--size", type=int, default=1024, help="side of the synthetic RGBA test image")
    p.add_argument("--prompt", default="", help="text mode instead of an image")
    p.add_argument("--output-format", default="glb", choices=["glb", "stl"])
    p.add_argument("--no-texture", action="store_true")
    p.add_argument("--no-jobs", action="store_true", help="only /v1/infer (e.g. against a real TRELLIS NIM)")
    p.add_argument("--api-key", default=os.environ.get("API_KEY", ""))
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--local", action="store_true", help="time the relief backend in-process instead")
    args = p.parse_args()
    print(json.dumps(bench_local(args) if args.local else bench_http(args), indent=2))


if __name__ == "__main__":
    main()
