"""Time a whole scene through the studio UI, as a user would wait for it: from sending a scene request to
(a) the plan shown, (b) the first image on a card, (c) all images, (d) the first GLB, (e) all GLBs.

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

REQUEST = "Create a cozy reading corner with an armchair, a floor lamp and a small bookshelf"


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


def run(url: str, steps: int, no_texture: bool) -> dict[str, Any]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    t0 = time.perf_counter()
    history, scene = client.predict(user(REQUEST), api_name="/chat")
    plan_s = time.perf_counter() - t0
    if not scene or not scene.get("objects"):
        return {"error": "no plan", "reply": history[-1] if history else None}
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
        "objects": len(objects),
        "images": sum(bool(o.get("image")) for o in objects),
        "glbs": sum(bool(o.get("model")) for o in objects),
        "backends": sorted({o["model"]["backend"] for o in objects if o.get("model")}),
        "plan_s": round(plan_s, 3),
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
    args = parser.parse_args()
    with started(args.start) if args.start else contextlib.nullcontext(args.url) as url:
        result = run(url, args.steps, no_texture=not args.texture)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
