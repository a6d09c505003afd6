#!/usr/bin/env bash
# Starts the chat-to-3D appliance: the LLM service, the 3D service and the Gradio UI under supervisord.
# The same script is the container's CMD and the native entry point (install.sh --native runs it).
#
#   ./start.sh            prepare, then run supervisord in the foreground (the container's main process)
#   ./start.sh --daemon   prepare, then let supervisord go to the background (native installs)
#
# Steps: find the venv's python -> validate the settings (config.py, .env) -> export the resolved paths and
# ports (scripts/ops_env.py) -> create the data/log/cache/run dirs -> check the GPU against the profile ->
# check that the ports are free -> download or verify model files (scripts/fetch_models.py; FETCH_MODELS=0
# skips it) -> exec supervisord with supervisord.conf.
#
# Environment: CHAT3D_PYTHON (interpreter to run everything with; default: $VIRTUAL_ENV, ./.venv, python3)
# and every setting of config.py (see .env.example), e.g. CHAT3D_PROFILE=gpu|cpu|tiny.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

log() { printf 'start.sh: %s\n' "$*"; }
die() {
  printf 'start.sh: ERROR: %s\n' "$*" >&2
  exit 1
}

pick_python() {
  if [ -n "${CHAT3D_PYTHON:-}" ]; then
    printf '%s\n' "$CHAT3D_PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    printf '%s\n' "$VIRTUAL_ENV/bin/python"
  elif [ -x "$ROOT/.venv/bin/python" ]; then
    printf '%s\n' "$ROOT/.venv/bin/python"
  else
    command -v python3 || die "no python3 found; run ./install.sh first"
  fi
}

check_python() {
  "$CHAT3D_PYTHON" -c 'import supervisor, pydantic_settings' 2>/dev/null ||
    die "$CHAT3D_PYTHON lacks the appliance's packages (supervisor, pydantic-settings); run ./install.sh --native"
}

check_settings() {
  "$CHAT3D_PYTHON" config.py --check || die "the settings above are not valid; fix them in .env or the environment"
  "$CHAT3D_PYTHON" -m studio.access || die "the studio would be open to anyone who reaches it; set the login above"
  local exports
  exports=$("$CHAT3D_PYTHON" scripts/ops_env.py) || die "could not resolve the settings"
  eval "$exports"
}

make_dirs() {
  local dir name
  for dir in "$DATA_DIR" "$LOG_DIR" "$CACHE_DIR" "$RUN_DIR" "${HF_HOME:-}" "${TORCH_HOME:-}"; do
    [ -z "$dir" ] || mkdir -p "$dir" || die "cannot create $dir (check the volume's owner and permissions)"
  done
  # The log files exist before supervisord starts, so log-stream (tail -F) follows them from the start.
  for name in llm-service trellis-service gradio-app; do
    touch "$LOG_DIR/$name.out.log" "$LOG_DIR/$name.err.log"
  done
}

check_gpu() {
  local gpus=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null || true)
  fi
  if [ "$CHAT3D_PROFILE" = gpu ] && [ -z "$gpus" ]; then
    die "profile 'gpu' needs an NVIDIA GPU, but nvidia-smi finds none. In Docker: install the NVIDIA Container \
Toolkit and start with 'docker compose up' (the compose file reserves the GPU). Without a GPU: set \
CHAT3D_PROFILE=cpu (or run ./install.sh --native)."
  fi
  if [ -n "$gpus" ]; then
    log "GPU: $(printf '%s' "$gpus" | head -n 1)$([ "$(printf '%s\n' "$gpus" | wc -l)" -gt 1 ] && printf ' (+more)')"
    [ "$CHAT3D_PROFILE" = gpu ] || log "note: a GPU is present but CHAT3D_PROFILE=$CHAT3D_PROFILE runs on the CPU"
  else
    log "no NVIDIA GPU; profile '$CHAT3D_PROFILE' runs on the CPU"
  fi
}

port_busy() {
  # bash's /dev/tcp: the connect succeeds only when something already listens there.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports() {
  local pair name port
  for pair in "LLM_PORT:$LLM_PORT" "TRELLIS_PORT:$TRELLIS_PORT" "GRADIO_SERVER_PORT:$GRADIO_SERVER_PORT"; do
    name=${pair%%:*}
    port=${pair#*:}
    if port_busy "$port"; then
      die "port $port ($name) is already in use: stop whatever uses it (is the appliance already running? \
'./install.sh --status') or set $name in .env to a free port"
    fi
  done
}

fetch_models() {
  if [ "${FETCH_MODELS:-1}" = 0 ]; then
    log "FETCH_MODELS=0: using the model files already on disk"
    return
  fi
  "$CHAT3D_PYTHON" scripts/fetch_models.py || log "model check failed (above); starting anyway"
}

main() {
  local daemon=0
  case "${1:-}" in
    --daemon) daemon=1 ;;
    "") ;;
    -h | --help)
      awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"
      exit 0
      ;;
    *) die "unknown argument '$1' (use --daemon or nothing)" ;;
  esac
  CHAT3D_PYTHON=$(pick_python)
  export CHAT3D_PYTHON
  check_python
  check_settings
  make_dirs
  check_gpu
  check_ports
  fetch_models
  log "starting supervisord (profile $CHAT3D_PROFILE, logs in $LOG_DIR, UI on port $GRADIO_SERVER_PORT)"
  if [ "$daemon" = 1 ]; then
    exec "$CHAT3D_PYTHON" -m supervisor.supervisord -c "$ROOT/supervisord.conf"
  fi
  exec "$CHAT3D_PYTHON" -m supervisor.supervisord -n -c "$ROOT/supervisord.conf"
}

main "$@"
