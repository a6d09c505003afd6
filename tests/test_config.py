"""Settings: profiles, environment names, validation messages, generated docs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

import config
from config import ROOT, Settings, format_errors


def make(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in config.Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("CHAT3D_PROFILE", raising=False)


@pytest.mark.parametrize(
    ("profile", "llm", "backend"),
    [
        ("gpu", "meta-llama/Llama-3.1-8B-Instruct", "trellis"),
        ("cpu", "Qwen/Qwen2.5-0.5B-Instruct", "relief"),
        ("tiny", config.BUILTIN_TINY_LLM, "relief"),
    ],
)
def test_profile_picks_defaults(monkeypatch: pytest.MonkeyPatch, profile: str, llm: str, backend: str) -> None:
    monkeypatch.setenv("CHAT3D_PROFILE", profile)
    s = make()
    assert (s.profile, s.llm_model, s.backend_3d) == (profile, llm, backend)
    assert s.safety_fail_closed is (profile != "cpu")
    # Only the cpu profile falls back, to the bundled model; elsewhere a model that cannot load is said plainly.
    assert s.llm_fallback_model == (config.BUILTIN_SMOLLM2 if profile == "cpu" else "")


def test_explicit_env_overrides_profile_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT3D_PROFILE", "gpu")
    monkeypatch.setenv("LLM_MODEL", "/models/my-llm")
    monkeypatch.setenv("BACKEND_3D", "relief")
    s = make()
    assert s.llm_model == "/models/my-llm"
    assert s.backend_3d == "relief"


def test_base_urls_follow_ports_and_wildcard_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_HOST", "0.0.0.0")
    monkeypatch.setenv("LLM_PORT", "19555")
    monkeypatch.setenv("TRELLIS_PORT", "8111")
    s = make()
    assert s.llm_root == "http://127.0.0.1:19555"
    assert s.trellis_root == "http://127.0.0.1:8111"


def test_explicit_base_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "http://llm.internal:9000/v1/")
    assert make().llm_root == "http://llm.internal:9000"


@pytest.mark.parametrize("given", ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/", " http://h:1/v1 "])
def test_service_urls_are_accepted_with_or_without_v1(given: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BASE_URL", given)
    monkeypatch.setenv("TRELLIS_BASE_URL", given)
    s = make()
    assert s.llm_root == s.trellis_root == "http://h:1"


@pytest.mark.parametrize("value", ["changeme", "hf_xxx", "your-token-here"])
def test_placeholder_token_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HF_TOKEN", value)
    with pytest.raises(ValidationError, match="HF_TOKEN is a placeholder"):
        make()


def test_empty_token_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "")
    assert make().token is None


def test_auth_user_without_password_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UI_AUTH_USER", "alice")
    with pytest.raises(ValidationError, match="UI_AUTH_PASSWORD"):
        make()


def test_bad_port_message_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PORT", "99999")
    with pytest.raises(ValidationError) as info:
        make()
    assert "LLM_PORT" in format_errors(info.value)


def test_check_command_exits_2_with_readable_message() -> None:
    env = {"PATH": "/usr/bin:/bin", "CHAT3D_PROFILE": "nonsense"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "config.py"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
        timeout=60,
    )
    assert proc.returncode == 2
    assert "CHAT3D_PROFILE" in proc.stderr or "profile" in proc.stderr.lower()


def test_every_setting_is_documented() -> None:
    for group, env, _default, desc in config.settings_rows():
        assert desc, f"{env} has no description"
        assert group, f"{env} has no group"


def test_readme_settings_table_matches_config() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config.render_readme(readme) == readme, "run `python config.py --readme`"
