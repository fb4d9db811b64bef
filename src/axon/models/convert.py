"""Convert a GGUF chat model into a Hugging Face folder (safetensors) that vLLM can load.

vLLM's CPU build cannot run the bundled Q4_1 GGUF, so the `vllm` engine serves a copy
dequantised by transformers. Only the conversion needs transformers and torch (from
``scripts/setup-vllm.sh``); they are imported inside the function so that the rest of
Axon never pays for them.

    python -m axon.models.convert [GGUF] OUT_DIR
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from axon.core.errors import ConfigError

log = logging.getLogger(__name__)

#: The weights type written. bf16 halves the folder against float32 and is what vLLM's
#: CPU build was measured to run; float32 is there for backends without bf16 kernels.
DTYPES = ("bfloat16", "float32")
_FIX = "run `bash scripts/setup-vllm.sh` and use `.venv-vllm/bin/python`"


def _require(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"Converting a GGUF model needs {package} (with torch, gguf and accelerate): "
            f"{_FIX}, or `pip install torch==2.13.0 transformers gguf accelerate safetensors`."
        ) from exc


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """Write the model in ``gguf_path`` to ``out_dir`` as a Hugging Face folder: config
    (architecture ``LlamaForCausalLM``), safetensors weights in ``dtype``, tokenizer with
    its chat template, and generation config. Returns ``out_dir``.

    The folder is built beside ``out_dir`` and renamed into place, so an interrupted
    conversion never leaves a folder that looks complete; an existing ``out_dir`` is
    replaced.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    if not gguf_path.is_file():
        raise ConfigError(f"GGUF file {gguf_path} does not exist.")
    torch = _require("torch", "torch")
    transformers = _require("transformers", "transformers")
    for name in ("gguf", "accelerate", "safetensors"):
        _require(name, name)

    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("loading %s (dequantising to %s)", gguf_path, dtype)
    kwargs: dict[str, Any] = {}
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 keeps GGUF weights packed unless told otherwise, and a packed
        # model cannot be saved; 4.x always unpacked them, and named `dtype` `torch_dtype`.
        kwargs["dtype"] = getattr(torch, dtype)
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    else:
        kwargs["torch_dtype"] = getattr(torch, dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf_path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        _fix_config(staging / "config.json", dtype)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", out_dir)
    return out_dir


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """The chat template stored in the GGUF metadata, for transformers releases that do
    not carry it over into the tokenizer themselves."""
    gguf = _require("gguf", "gguf")
    reader = gguf.GGUFReader(str(gguf_path))
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _fix_config(path: Path, dtype: str) -> None:
    """vLLM picks its model class from ``architectures``; a config converted from GGUF
    may lack it, and must name the dtype the weights were written in."""
    config = json.loads(path.read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    config["torch_dtype"] = dtype
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m axon.models.convert [GGUF] OUT_DIR``; GGUF defaults to the bundled model."""
    parser = argparse.ArgumentParser(
        prog="python -m axon.models.convert",
        description="Convert a GGUF chat model into a Hugging Face folder for the vllm engine.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[GGUF] OUT_DIR",
        help="GGUF file (default: the bundled SmolLM2 model) and the folder to write",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error("expected at most two paths: [GGUF] OUT_DIR")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if len(args.paths) == 2:
            gguf_path = Path(args.paths[0])
        else:
            from axon.models.gguf import default_model_path

            gguf_path = default_model_path()
        out = convert_gguf_to_hf(gguf_path, Path(args.paths[-1]), dtype=args.dtype)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
