"""`POST /v1/moderations` answers only from a loaded classifier: a missing one is a 503 that says what is missing and
how to get it, unless the settings turn the check off (SAFETY_PROMPT_MODEL empty) or allow unchecked work
(SAFETY_FAIL_CLOSED=false), and then the answer says it is unchecked instead of naming the classifier. Inputs are
bounded (MODERATION_MAX_INPUTS, MAX_PROMPT_CHARS) and classified off the event loop."""

from __future__ import annotations

import threading
import time

import httpx

from nim_trellis.app import create_app
from nim_trellis.service import TrellisService
from tests.support import serve_in_thread, wait_http
from tests.trellis.conftest import running, wait_loaded

MISSING = "/nonexistent/classifier"


def moderate(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/moderations", json=body, timeout=60)


def test_moderation_fail_closed_names_the_missing_classifier_and_how_to_get_it(make_settings) -> None:
    settings = make_settings(safety_prompt_model=MISSING, safety_fail_closed=True, imagegen_model="")
    with running(settings, ready=False) as url:
        wait_loaded(url)
        r = moderate(url, {"input": "a red chair"})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "safety_unavailable" and MISSING in err["message"]
        assert "SAFETY_PROMPT_MODEL" in err["message"] and "fetch_models.py" in err["message"], err["message"]


def test_moderation_fail_open_says_unchecked_instead_of_naming_the_classifier(make_settings) -> None:
    settings = make_settings(safety_prompt_model=MISSING, safety_fail_closed=False, imagegen_model="")
    with running(settings) as url:
        body = moderate(url, {"input": ["a red chair", "a lamp"]}).json()
        assert body["model"] != MISSING and body["model"] == "unchecked", body
        assert "SAFETY_FAIL_CLOSED=false" in body["warning"] and MISSING in body["warning"]
        assert all(r["flagged"] is False and r["checked"] is False for r in body["results"])
        assert all(r["category_scores"] == {} for r in body["results"])  # no classifier, no score


def test_moderation_off_explicitly_says_so(make_settings) -> None:
    with running(make_settings(safety_prompt_model="", imagegen_model="")) as url:
        body = moderate(url, {"input": "a red chair"}).json()
        assert body["model"] == "off" and body["results"][0]["checked"] is False
        assert "SAFETY_PROMPT_MODEL" in body["warning"]


def test_moderation_from_a_loaded_classifier_is_checked(tiny_url: str) -> None:
    body = moderate(tiny_url, {"input": "a red chair"}).json()
    assert body["results"][0]["checked"] is True and body.get("warning") is None


def test_moderation_bounds_inputs_per_call_and_their_length(make_settings) -> None:
    with running(make_settings(imagegen_model="", moderation_max_inputs=3, max_prompt_chars=50)) as url:
        many = moderate(url, {"input": ["a"] * 4})
        assert many.status_code == 400 and many.json()["error"]["param"] == "input"
        assert "MODERATION_MAX_INPUTS" in many.json()["error"]["message"]
        long = moderate(url, {"input": ["a", "x" * 51]})
        assert long.status_code == 400 and "MAX_PROMPT_CHARS" in long.json()["error"]["message"]
        assert moderate(url, {"input": ["a"] * 3}).status_code == 200


def test_moderation_runs_off_the_event_loop(make_settings) -> None:
    settings = make_settings(imagegen_model="")
    service = TrellisService(settings)
    with serve_in_thread(create_app(settings, service=service)) as url:
        wait_http(f"{url}/v1/health/ready", timeout_s=120)
        real = service.safety.prompt._pipe

        def slow(*args: object, **kwargs: object) -> object:
            time.sleep(0.5)
            return real(*args, **kwargs)

        service.safety.prompt._pipe = slow
        caller = threading.Thread(target=moderate, args=(url, {"input": ["a", "b", "c"]}))
        caller.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert httpx.get(f"{url}/v1/health/live").status_code == 200
        assert time.monotonic() - started < 0.3  # the loop answers while the classifier works
        caller.join()
