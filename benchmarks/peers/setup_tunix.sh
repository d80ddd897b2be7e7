#!/usr/bin/env bash
# Creates (or reuses) the virtualenv benchmarks/peers/tunix_side.py runs in, and prints its python's path.
#
#   bash benchmarks/peers/setup_tunix.sh [VENV]        # default VENV: $HOME/.cache/sparkjax/tunix_venv
#   PY=$(bash benchmarks/peers/setup_tunix.sh) && "$PY" benchmarks/peers/tunix_side.py --spec S.json --out O.json
#
# Installs google-tunix==0.1.7, jax[cpu] pinned to the jax version of the calling python (the one named by $PYTHON,
# else python3 / python on PATH; 0.10.2 if it cannot import jax), and safetensors. Idempotent: when VENV's python
# already imports tunix and google-tunix is at 0.1.7, nothing is installed. Progress goes to stderr; stdout holds
# only the python path, so the script can be used in $(...).
set -euo pipefail

TUNIX_VERSION=0.1.7
DEFAULT_JAX_VERSION=0.10.2
VENV="${1:-$HOME/.cache/sparkjax/tunix_venv}"

if [[ -n "${PYTHON:-}" ]]; then
  CALLER="$PYTHON"
elif command -v python3 >/dev/null 2>&1; then
  CALLER=python3
else
  CALLER=python
fi

has_tunix() {
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" - "$TUNIX_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata, sys
import tunix  # noqa: F401
sys.exit(importlib.metadata.version("google-tunix") != sys.argv[1])
EOF
}

if has_tunix; then
  echo "setup_tunix: $VENV already has google-tunix $TUNIX_VERSION; nothing to install" >&2
else
  JAX_VERSION=$("$CALLER" -c 'import jax; print(jax.__version__)' 2>/dev/null || true)
  # a development build (e.g. 0.10.3.dev20260101) has no wheel on PyPI: fall back to the default pin
  if [[ ! "$JAX_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    JAX_VERSION=$DEFAULT_JAX_VERSION
  fi
  echo "setup_tunix: installing google-tunix==$TUNIX_VERSION, jax[cpu]==$JAX_VERSION into $VENV" >&2
  mkdir -p "$(dirname "$VENV")"
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$CALLER" -m venv "$VENV" >&2
  fi
  "$VENV/bin/python" -m pip install "google-tunix==$TUNIX_VERSION" "jax[cpu]==$JAX_VERSION" safetensors >&2
  if ! has_tunix; then
    echo "setup_tunix: $VENV/bin/python cannot import tunix $TUNIX_VERSION after the install" >&2
    exit 1
  fi
fi

echo "$VENV/bin/python"
