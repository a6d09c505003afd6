"""Entry point of the LLM service: `python nim_llm/run_llama_local.py` (or `python -m nim_llm.run_llama_local`).

Reads the settings (environment and .env), builds the app and serves it on LLM_HOST:LLM_PORT with uvicorn.
The model loads in the background; watch `/v1/health/ready`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Run as a script, Python puts nim_llm/ (not the repository root) on sys.path; the packages live at the root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import uvicorn

    from config import get_settings
    from nim_llm.api import create_app

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.llm_host, port=settings.llm_port, log_level=settings.log_level, timeout_graceful_shutdown=5
    )


if __name__ == "__main__":
    main()
