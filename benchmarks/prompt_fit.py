"""Time to fit and encode prompts of many tiny messages, to show that it grows linearly.

A request with thousands of one-character messages once took seconds of event-loop time
(quadratic prompt counting). For each message count this prints, per tokenizer:

- ``stateless``: ``fit_prompt`` with every message new, as ``/v1/chat/completions`` does
  (a prompt this long is refused, but only after it was counted);
- ``session``: ``fit_prompt`` with the messages as stored history and a window large
  enough for all of them (the most history that is ever counted);
- ``encode``: ``GgufTokenizer.encode_prompt``, what the llamacpp engine runs per job.

    python benchmarks/prompt_fit.py
    python benchmarks/prompt_fit.py --counts 1000 4000 --tokenizers estimate

To compare with another checkout, run it with ``PYTHONPATH=<that checkout>/src``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

from axon.core.errors import ContextWindowExceeded
from axon.core.types import ChatMessage
from axon.models.base import ModelInfo, Tokenizer
from axon.models.estimate import EstimateTokenizer
from axon.sessions.prompt import fit_prompt
from report import print_table

HUGE_WINDOW = 10**9
REAL_WINDOW = 8192


def conversation(n: int) -> list[ChatMessage]:
    """``n`` messages of one character each, all different (CJK ideographs, so that no
    cache of repeated texts helps), alternating user and assistant, ending with a user's."""
    return [
        ChatMessage(role="user" if (n - i) % 2 else "assistant", content=chr(0x4E00 + i % 20000))
        for i in range(n)
    ]


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    with contextlib.suppress(ContextWindowExceeded):
        work()
    return time.perf_counter() - started


def measure(name: str, tokenizer: Tokenizer, n: int) -> dict[str, object]:
    messages = conversation(n)

    def stateless() -> object:
        info = ModelInfo("bench", REAL_WINDOW, tokenizer)
        return fit_prompt(info, system=None, history=[], new=messages, reserve=512)

    def session() -> object:
        info = ModelInfo("bench", HUGE_WINDOW, tokenizer)
        history, new = messages[:-1], messages[-1:]
        return fit_prompt(info, system="Be brief.", history=history, new=new, reserve=512)

    encode = getattr(tokenizer, "encode_prompt", None)
    return {
        "tokenizer": name,
        "messages": n,
        "stateless s": f"{seconds(stateless):.3f}",
        "session s": f"{seconds(session):.3f}",
        "encode s": f"{seconds(lambda: encode(messages)):.3f}" if encode else "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 4000, 8000, 20000])
    parser.add_argument(
        "--tokenizers", nargs="+", choices=["estimate", "gguf"], default=["estimate", "gguf"]
    )
    args = parser.parse_args()
    tokenizers: list[tuple[str, Tokenizer]] = []
    if "estimate" in args.tokenizers:
        tokenizers.append(("estimate", EstimateTokenizer()))
    if "gguf" in args.tokenizers:
        from axon.models.gguf import GgufTokenizer, default_model_path

        tokenizers.append(("gguf", GgufTokenizer(default_model_path())))
    print_table([measure(name, tok, n) for name, tok in tokenizers for n in args.counts])


if __name__ == "__main__":
    main()
