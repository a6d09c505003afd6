"""Whether a model can be loaded before loading it: on disk, or downloadable now.

transformers and diffusers retry an unreachable Hugging Face hub for about a minute per model, with long
tracebacks, before failing (measured: 57 s and ~350 log lines for the two safety classifiers of the cpu profile).
Both services ask here first: a model that is in the HF cache loads from its local snapshot (no network at all),
one that is neither cached nor downloadable is refused at once with one line that says what is missing and how to
get it (`ModelMissing`).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import Settings

HUB_PROBE_TIMEOUT_S = 3.0  # a hub (or HF_ENDPOINT mirror) that does not answer within this counts as unreachable
HUB_PROBE_MEMO_S = 30.0  # one start probes once, not once per model; a hub that comes back is seen after this
LOCAL_PREFIXES = ("/", "./", "../", "~")  # how a model setting names a folder rather than a hub id

_probes: dict[str, tuple[float, bool]] = {}


class ModelMissing(Exception):
    """A model is neither on disk nor downloadable now; the message says which and how to get it."""


def hub_offline(settings: Settings) -> bool:
    from huggingface_hub import constants

    return settings.hf_hub_offline or bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_reachable() -> bool:
    """Whether the hub (HF_ENDPOINT) answers at all; remembered for HUB_PROBE_MEMO_S."""
    endpoint = hub_endpoint()
    probed = _probes.get(endpoint)
    if probed and time.monotonic() - probed[0] < HUB_PROBE_MEMO_S:
        return probed[1]
    try:
        urllib.request.urlopen(endpoint, timeout=HUB_PROBE_TIMEOUT_S).close()
        answered = True
    except urllib.error.HTTPError:
        answered = True  # any HTTP status is an answer
    except OSError:
        answered = False
    _probes[endpoint] = (time.monotonic(), answered)
    return answered


def cached_snapshot(model_id: str, settings: Settings) -> str | None:
    """The local folder of `model_id` in the HF cache, or None when it is not (completely) there."""
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(model_id, local_files_only=True, token=settings.token))
    except Exception:  # not in the cache, or not a hub id at all
        return None


def loadable_source(model_id: str, settings: Settings, setting: str) -> str:
    """What to hand to `from_pretrained` for `model_id` (the value of `setting`): an existing folder as it is, a
    cached hub id as its local snapshot, an uncached one as the id when the hub answers; else `ModelMissing`."""
    if Path(model_id).expanduser().exists():
        return model_id
    if model_id.startswith(LOCAL_PREFIXES):
        raise ModelMissing(f"{model_id} does not exist; set {setting} to an existing folder or a hub id")
    cached = cached_snapshot(model_id, settings)
    if cached:
        return cached
    how = (
        f"fetch it with `python scripts/fetch_models.py` where the hub is reachable (start.sh does that when "
        f"FETCH_MODELS=true) or set {setting} to a local folder"
    )
    if hub_offline(settings):
        raise ModelMissing(f"{model_id} is not downloaded (HF_HUB_OFFLINE is set); {how}")
    if not hub_reachable():
        raise ModelMissing(
            f"{model_id} is not downloaded and the Hugging Face hub ({hub_endpoint()}) cannot be reached; {how}"
        )
    return model_id


def network_allowed(settings: Settings) -> bool:
    """Whether a download outside the HF hub (torch.hub) may be tried: the hub's reachability stands in for the
    network's, as in `scripts/fetch_models.py`."""
    return not hub_offline(settings) and hub_reachable()
