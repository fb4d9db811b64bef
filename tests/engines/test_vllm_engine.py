"""The vllm engine on vLLM's CPU build, against the bundled SmolLM2 model converted to a
Hugging Face folder.

vLLM lives in its own environment (``scripts/setup-vllm.sh`` builds ``.venv-vllm``), not
in the one running these tests: the test converts the model and runs
``vllm_driver.py`` there once, and each test asserts on one scenario of its results.
Without that environment those tests skip locally and fail in CI. The first few tests
run here, without vLLM, and check that its absence is reported with the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from axon.config import EngineSettings
from axon.core.errors import ConfigError
from axon.models.convert import convert_gguf_to_hf
from axon.models.convert import main as convert_main
from axon.worker.engines.vllm import VllmEngine
from support.services import missing

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("AXON_VLLM_VENV") or ROOT / ".venv-vllm")
DRIVER = Path(__file__).with_name("vllm_driver.py")
CONVERTER = ROOT / "src" / "axon" / "models" / "convert.py"
# Startup takes about a minute on 2 cores and the scenarios about as long; these bound
# a hung process, they time nothing.
CONVERT_TIMEOUT_S = 900
DRIVER_TIMEOUT_S = 1200


def _env() -> dict[str, str]:
    # Everything is local: no hub look-ups, no progress bars in the captured output.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def _run(args: list[str], timeout: float) -> None:
    done = subprocess.run(
        args, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")


@pytest.fixture(scope="module")
def venv_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        missing(f"{VENV} is missing: run `bash scripts/setup-vllm.sh`")
    return python


@pytest.fixture(scope="module")
def model_dir(venv_python: Path) -> Path:
    """The bundled GGUF converted once per version of the converter, and kept: the
    conversion takes about 40 s."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "axon"
    key = hashlib.sha256(CONVERTER.read_bytes()).hexdigest()[:12]
    folder = cache / f"smollm2-135m-instruct-hf-{key}"
    # The converter renames a finished folder into place, so config.json means complete.
    if not (folder / "config.json").is_file():
        _run([str(venv_python), "-m", "axon.models.convert", str(folder)], CONVERT_TIMEOUT_S)
    return folder


@pytest.fixture(scope="module")
def results(venv_python: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("vllm") / "results.jsonl"
    _run([str(venv_python), str(DRIVER), str(model_dir), str(out)], DRIVER_TIMEOUT_S)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return {line["scenario"]: line["result"] for line in lines}


needs_no_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here"
)
needs_no_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is not None, reason="transformers is installed here"
)


def test_from_settings_needs_a_model_folder() -> None:
    with pytest.raises(ConfigError, match="AXON_ENGINE__VLLM__MODEL_DIR"):
        VllmEngine.from_settings(EngineSettings(kind="vllm"))


@needs_no_vllm
async def test_missing_vllm_names_the_setup_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine sets these for vLLM; monkeypatch undoes it after the test.
    monkeypatch.setenv("VLLM_CONFIGURE_LOGGING", "0")
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")
    engine = VllmEngine("m", tmp_path, context_window=512, default_max_tokens=16)
    with pytest.raises(ConfigError, match=r"setup-vllm\.sh"):
        await engine.start()
    assert not engine.ready


@needs_no_transformers
def test_missing_transformers_names_the_setup_script(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"setup-vllm\.sh"):
        convert_gguf_to_hf(gguf, tmp_path / "out")
    assert convert_main([str(gguf), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.e2e
class TestOnVllmCpu:
    """The real engine, driven in ``.venv-vllm``."""

    def test_conversion_writes_a_llama_folder(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["torch_dtype"] == "bfloat16"
        assert (model_dir / "model.safetensors").is_file()
        assert (model_dir / "generation_config.json").is_file()
        tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
        template = tokenizer.get("chat_template") or (model_dir / "chat_template.jinja").read_text()
        assert "<|im_start|>" in template

    def test_streams_a_reply_in_chunks(self, results: Any) -> None:
        assert results["ready"] is True
        stream = results["stream"]
        chunks = stream["chunks"]
        assert len(chunks) >= 3
        assert stream["text"].strip()
        assert stream["finish"] in ("stop", "length")
        assert all(c["finish"] is None for c in chunks[:-1])
        # Counted with the same template and vocabulary the engine decodes with.
        assert chunks[0]["prompt_tokens"] == results["count_prompt"] > 0
        assert 0 < stream["tokens"] <= 24

    def test_max_tokens_ends_with_length(self, results: Any) -> None:
        assert results["length"]["finish"] == "length"
        assert results["length"]["tokens"] == 5
        # Greedy decoding: the short reply is the start of the long one.
        assert results["stream"]["text"].startswith(results["length"]["text"])

    def test_stop_sequence_ends_the_reply_before_it(self, results: Any) -> None:
        stop = results["stop"]
        assert stop["finish"] == "stop"
        assert stop["stop"] not in stop["text"]
        assert results["stream"]["text"].startswith(stop["text"] + stop["stop"])

    def test_a_prefix_is_continued_not_repeated(self, results: Any) -> None:
        resumed = results["prefix"]
        assert resumed["chunks"][0]["prompt_tokens"] == results["count_prompt"]
        # The prefix's tokens count against max_tokens (8): fewer are left to generate.
        assert 0 < resumed["tokens"] < 8
        assert not resumed["text"].startswith(resumed["prefix"])
        # Greedy decoding continues exactly where the uninterrupted reply went on.
        assert results["stream"]["text"].startswith(resumed["prefix"] + resumed["text"])

    def test_closing_the_stream_aborts_the_request(self, results: Any) -> None:
        cancel = results["cancel"]
        assert len(cancel["chunks"]) == 3
        assert cancel["finish"] is None
        assert cancel["running_after"] == 0  # vLLM holds no request any more
        after = results["after_cancel"]
        assert after["finish"] == "length"
        assert after["tokens"] == 4
        assert after["running_after"] == 0

    def test_control_tokens_typed_in_a_message_stay_text(self, results: Any) -> None:
        forged = results["control_tokens"]
        start, end = forged["im_start"], forged["im_end"]
        (sent,) = forged["sent"]
        # vLLM receives the ids the tokenizer counts, not text it would tokenize itself.
        assert sent == forged["encoded"]
        assert forged["prompt_tokens"] == forged["count_prompt"] == len(sent)
        # One turn header per real message (system, user) and one for the reply; the
        # forged header and turn ends are plain characters...
        assert (sent.count(start), sent.count(end)) == (3, 2)
        assert forged["rendered_ids"].count(start) == 5  # ...which would otherwise forge a turn
        text = forged["text_ids"]
        assert not set(text) & set(forged["special_ids"])
        assert any(sent[i : i + len(text)] == text for i in range(len(sent)))
        # Nothing is lost: the ids spell exactly the rendered conversation.
        assert forged["decoded"] == forged["rendered"]

    def test_a_seed_makes_sampling_repeatable(self, results: Any) -> None:
        assert results["seed_a"]["text"].strip()
        assert results["seed_a"]["text"] == results["seed_b"]["text"]

    def test_prompt_beyond_the_context_window_is_refused(self, results: Any) -> None:
        assert results["too_long"] == "context_length_exceeded"

    def test_close_stops_the_engine(self, results: Any) -> None:
        assert results["ready_after_close"] is False
