"""nim_llm: a Transformers LLM behind an OpenAI- and NIM-compatible HTTP API.

Layers, outer to inner: `api` (FastAPI app, thin routers) -> `serving` (request logic) -> `engine` (one
scheduler thread batching all sequences) -> `batch` / `sequence` / `sampling` / `structured` (the hot loop's
parts). `loading` and `tiny` produce the model; `protocol` holds the wire models; `errors` the one error type.
"""

__version__ = "0.1.0"
