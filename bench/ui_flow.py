"""Time a whole scene through the studio UI, as a user would wait for it: from sending a scene request to
(a) the first card on the board (the plan streams), (b) the plan complete and saved, (c) the first image on a card,
(d) all images, (e) the first GLB, (f) all GLBs. `--plans N` sends the request N times (each on a fresh scene) and
reports every plan's times, to show they hold every time; images and 3D are timed on the last one.

    python bench/ui_flow.py --url http://127.0.0.1:7860          # a running appliance, any profile
    python bench/ui_flow.py --start tiny                          # starts both services + the app (tiny or cpu)

Drives the app's named Gradio endpoints with gradio_client (/chat, /generate_images, /generate_3d), timing each
streamed board update on arrival. Prints one JSON object; times are seconds since the request was sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.appliance import app_url, base_env
from bench.appliance import started as appliance_started

REQUEST = "a cozy reading corner with an armchair, a floor lamp and a small side table"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def first_time(job: Any, t0: float, done: Any) -> tuple[float | None, Any]:
    """Seconds (since t0) when a streamed output first satisfies `done`, and the final output."""
    first = None
    for output in job:
        scene = output[-1] if isinstance(output, tuple | list) else output
        if first is None and scene and done(scene):
            first = time.perf_counter() - t0
    return first, job.result()


def plan_once(client: Any) -> tuple[dict[str, Any], Any]:
    """One scene request on a fresh scene: its times and objects, and the saved scene (None without a plan)."""
    client.predict(api_name="/new_scene")
    t0 = time.perf_counter()
    first_card_s, (history, scene) = first_time(
        client.submit(user(REQUEST), "plan", api_name="/chat"), t0, lambda s: bool(s.get("objects"))
    )
    plan_s = time.perf_counter() - t0
    objects = (scene or {}).get("objects") or []
    reply = history[-1]["content"] if history else None
    times = {"first_card_s": _r(first_card_s), "plan_s": round(plan_s, 3), "objects": len(objects)}
    if not objects:
        times["error"] = f"no plan: {reply}"
    else:
        times["names"] = [o["name"] for o in objects]
    return times, scene if objects else None


def run(url: str, steps: int, no_texture: bool, plans: int = 1) -> dict[str, Any]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    runs = []
    for _ in range(plans):
        times, scene = plan_once(client)
        runs.append(times)
    if scene is None:
        return {"url": url, "request": REQUEST, "plans": runs, "error": "no plan"}
    t0 = time.perf_counter()
    first_image_s, scene = first_time(
        client.submit(api_name="/generate_images"), t0, lambda s: any(o.get("image") for o in s["objects"])
    )
    all_images_s = time.perf_counter() - t0
    first_glb_s, scene = first_time(
        client.submit(0, steps, steps, 7.5, 3.0, no_texture, api_name="/generate_3d"),
        t0,
        lambda s: any(o.get("model") for o in s["objects"]),
    )
    all_glbs_s = time.perf_counter() - t0
    objects = scene["objects"] if scene else []
    return {
        "url": url,
        "request": REQUEST,
        "plans": runs,
        "first_card_s_max": max((r["first_card_s"] or 0.0) for r in runs),
        "plan_s_max": max(r["plan_s"] for r in runs),
        "objects": len(objects),
        "images": sum(bool(o.get("image")) for o in objects),
        "glbs": sum(bool(o.get("model")) for o in objects),
        "backends": sorted({o["model"]["backend"] for o in objects if o.get("model")}),
        "first_image_s": _r(first_image_s),
        "all_images_s": round(all_images_s, 3),
        "first_glb_s": _r(first_glb_s),
        "all_glbs_s": round(all_glbs_s, 3),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@contextlib.contextmanager
def started(profile: str) -> Iterator[str]:
    """The whole appliance through start.sh, on the profile's defaults, as a user meets them."""
    with tempfile.TemporaryDirectory(prefix="ui-flow-") as root:
        env = base_env(Path(root), profile)
        with appliance_started(env, Path(root) / "start.log"):
            yield app_url(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="the studio's URL")
    parser.add_argument("--start", choices=["tiny", "cpu"], help="start services and app in this profile")
    parser.add_argument("--steps", type=int, default=12, help="3D sampling steps (both stages)")
    parser.add_argument("--texture", action="store_true", help="bake textures (slower on TRELLIS)")
    parser.add_argument("--plans", type=int, default=1, help="how many times to send the scene request")
    args = parser.parse_args()
    with started(args.start) if args.start else contextlib.nullcontext(args.url) as url:
        result = run(url, args.steps, no_texture=not args.texture, plans=args.plans)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
