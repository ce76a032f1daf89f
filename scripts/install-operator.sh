#!/bin/sh
# Install the operator, and only its runtime dependencies, into a new virtualenv.
# The Dockerfile runs exactly this; tests/e2e/test_packaging.py runs it too, because no
# Docker engine is available to build the image in CI.
#   scripts/install-operator.sh VENV_DIR [SOURCE_DIR]
set -eu
venv="$1"
src="${2:-.}"
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet --upgrade pip
"$venv/bin/pip" install --no-cache-dir --quiet -c "$src/constraints.txt" "$src"
# The final image needs no installer.
"$venv/bin/pip" uninstall --quiet --yes pip
