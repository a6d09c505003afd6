"""Entry point of the 3D service: `python -m nim_trellis.run_trellis_local` (binds TRELLIS_HOST:TRELLIS_PORT)."""

from __future__ import annotations

import logging
import os

from config import get_settings


def main() -> None:
    settings = get_settings()
    if settings.hf_hub_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub at import time: set before any model import
    if settings.token:
        os.environ.setdefault("HF_TOKEN", settings.token)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from nim_trellis.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.trellis_host,
        port=settings.trellis_port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
