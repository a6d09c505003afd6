"""Readiness of the whole appliance: exit 0 only when the LLM service, the 3D service and the UI all answer.

Used by the Docker HEALTHCHECK, docker-compose, install.sh (`--wait`) and the ops tests, so "healthy" means
the same thing everywhere: both model services report `GET /v1/health/ready` 200 (models loaded and warmed
up), the UI serves its page, and DATA_DIR takes a new file and has STORAGE_MIN_FREE_MB free (`storage`; checked
here too, as the UI saves scenes there and a stopped service cannot say so). Standard library only, apart from
the settings (`config.py`) and the storage check (`servicekit/storage.py`).

    python scripts/healthcheck.py              # one check, one line per service
    python scripts/healthcheck.py --wait 600   # poll until ready or time out, printing progress
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from config import Settings, _client_host, get_settings
from servicekit.storage import check_storage


def endpoints(s: Settings) -> dict[str, str]:
    """Readiness URL of each program, as seen from this machine (or container)."""
    ui_host = _client_host(s.gradio_server_name)
    return {
        "llm-service": f"{s.llm_root}/v1/health/ready",
        "trellis-service": f"{s.trellis_root}/v1/health/ready",
        # The page itself: 200 also with UI_AUTH_USER set (Gradio then serves its login page).
        "gradio-app": f"http://{ui_host}:{s.gradio_server_port}/",
    }


def explain(status: int, body: bytes) -> str:
    """A short reason from a not-ready answer: the services' JSON `message` (NIM and OpenAI shapes) or the text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        message = data.get("message") or (data.get("error") or {}).get("message") or data.get("detail") or text
    except (ValueError, AttributeError):
        message = text
    message = " ".join(str(message).split())
    return f"{status} {message[:80]}".strip()


def probe(url: str, headers: dict[str, str], timeout_s: float) -> tuple[bool, str]:
    """(ready, short reason) for one GET."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200, str(response.status)
    except urllib.error.HTTPError as err:
        return False, explain(err.code, err.read(4096))
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return False, "not answering yet" if isinstance(reason, ConnectionRefusedError) else f"not answering ({reason})"


def check(s: Settings, timeout_s: float = 5.0) -> dict[str, tuple[bool, str]]:
    headers = {"Authorization": f"Bearer {s.api_key.get_secret_value()}"} if s.api_key else {}
    results = {name: probe(url, headers, timeout_s) for name, url in endpoints(s).items()}
    problem = check_storage(s.data_dir, s.storage_min_free_mb)
    results["storage"] = (problem is None, problem or "ok")
    return results


def summary(results: dict[str, tuple[bool, str]]) -> str:
    return " | ".join(f"{name}: {'ready' if ok else why}" for name, (ok, why) in results.items())


def wait(s: Settings, limit_s: float, every_s: float = 2.0, report_s: float = 10.0) -> bool:
    """Poll until every program is ready; print a progress line when the picture changes or every report_s."""
    start = last_report = time.monotonic()
    last = ""
    while True:
        results = check(s)
        line = summary(results)
        elapsed = time.monotonic() - start
        if all(ok for ok, _ in results.values()):
            print(f"[{elapsed:5.0f}s] all ready: {line}", flush=True)
            return True
        if line != last or time.monotonic() - last_report >= report_s:
            print(f"[{elapsed:5.0f}s] waiting: {line}", flush=True)
            last, last_report = line, time.monotonic()
        if elapsed >= limit_s:
            print(f"gave up after {limit_s:.0f}s; see the logs in {s.log_dir}", file=sys.stderr)
            return False
        time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, metavar="SECONDS", help="poll until ready, at most this long")
    args = parser.parse_args(argv)
    s = get_settings()
    if args.wait is not None:
        return 0 if wait(s, args.wait) else 1
    results = check(s)
    print(summary(results))
    return 0 if all(ok for ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
