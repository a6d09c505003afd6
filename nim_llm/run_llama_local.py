"""Entry point of the LLM service: `python -m nim_llm.run_llama_local` (the package is installed: `pip install -e .`).

Reads the settings (environment and .env), builds the app and serves it on LLM_HOST:LLM_PORT with uvicorn.
The model loads in the background; watch `/v1/health/ready`.
"""

from __future__ import annotations

import logging


def main() -> None:
    import uvicorn

    from config import get_settings
    from nim_llm.app import create_app

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.llm_host, port=settings.llm_port, log_level=settings.log_level, timeout_graceful_shutdown=5
    )


if __name__ == "__main__":
    main()
