#!/bin/sh
# Installs Herald into a fresh virtual environment, as the Dockerfile does (and as
# tests/integration/test_image.py checks without Docker), in two steps so that the image
# keeps its dependency layer when only the code changes:
#   install-image.sh deps PREFIX   the pinned dependencies (constraints.txt)
#   install-image.sh app PREFIX    Herald's own wheel, against the same pins
# Run from the repository root. PYTHON names the interpreter (default: python).
set -eu
step=$1
prefix=$2
if [ "$step" = deps ]; then
    "${PYTHON:-python}" -m venv "$prefix"
    "$prefix/bin/pip" install --no-cache-dir --quiet --upgrade pip
    "$prefix/bin/pip" install --no-cache-dir --quiet -r constraints.txt
else
    wheels=$(mktemp -d)
    "$prefix/bin/pip" wheel --no-cache-dir --quiet --no-deps --wheel-dir "$wheels" .
    "$prefix/bin/pip" install --no-cache-dir --quiet -c constraints.txt "$wheels"/herald-*.whl
    rm -rf "$wheels"
fi
