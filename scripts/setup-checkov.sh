#!/usr/bin/env bash
# Builds .venv-checkov: a virtual environment with checkov, the scanner that
# tests/unit/deploy/test_checkov.py runs over deploy/terraform and the Kubernetes overlays.
#
# A separate environment because checkov pins exact versions of many packages Axon's own
# environment also uses (pydantic, pyyaml, packaging, aiohttp...): installed beside Axon it
# would downgrade them. Idempotent: a stamp keyed by this script (which holds the pinned
# version) makes a second run a no-op in well under a second.
#
# Usage: bash scripts/setup-checkov.sh        (AXON_CHECKOV_VENV overrides the folder)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${AXON_CHECKOV_VENV:-$ROOT/.venv-checkov}"
PY="$VENV/bin/python"
STAMP="$VENV/.axon-setup.sha256"

# The release the Terraform and the manifests were last scanned with: a newer checkov
# brings new checks, so moving this pin is a change to review, not a silent drift.
CHECKOV_VERSION="3.3.30"

key="$(sha256sum "$0" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/checkov" && -f "$STAMP" && "$(cat "$STAMP")" == "$key" ]]; then
    echo "setup-checkov: $VENV is up to date"
    exit 0
fi

started=$SECONDS
if [[ ! -x "$PY" ]]; then
    echo "setup-checkov: creating $VENV"
    python3 -m venv "$VENV"
fi
rm -f "$STAMP"

echo "setup-checkov: checkov $CHECKOV_VERSION"
"$PY" -m pip install --disable-pip-version-check --progress-bar off "checkov==$CHECKOV_VERSION"

echo "setup-checkov: checking the install"
version="$("$VENV/bin/checkov" --version)"
if [[ "$version" != "$CHECKOV_VERSION" ]]; then
    echo "setup-checkov: expected checkov $CHECKOV_VERSION, found $version" >&2
    exit 1
fi

echo "$key" >"$STAMP"
echo "setup-checkov: done in $((SECONDS - started)) s"
