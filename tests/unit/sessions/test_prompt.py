"""Fitting a conversation into the model's context window."""

from __future__ import annotations

import pytest

from axon.core.errors import ContextWindowExceeded
from axon.core.types import ChatMessage
from axon.models.base import ModelInfo
from axon.models.estimate import EstimateTokenizer
from axon.sessions.prompt import fit_prompt, reply_budget

TOKENIZER = EstimateTokenizer()
SYSTEM = "You are a terse assistant."
RESERVE = 64


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def system(text: str = SYSTEM) -> ChatMessage:
    return ChatMessage(role="system", content=text)


# Three turns, oldest first; each message 40 characters.
HISTORY = [
    user("first question, padded to forty chars.."),
    assistant("first answer, padded to forty characters"),
    user("second question, padded to forty chars."),
    assistant("second answer, padded to forty character"),
    user("third question, padded to forty chars..."),
    assistant("third answer, padded to forty characters"),
]
NEW = [user("and now?")]


def model(context_window: int) -> ModelInfo:
    return ModelInfo("tiny", context_window, EstimateTokenizer())


def window_for(messages: list[ChatMessage], reserve: int = RESERVE) -> int:
    """The smallest context window in which ``messages`` fit with ``reserve`` to spare."""
    return TOKENIZER.count_prompt(messages) + reserve


def fit(
    context_window: int, *, reserve: int = RESERVE, sys: str | None = SYSTEM
) -> list[ChatMessage]:
    return fit_prompt(model(context_window), system=sys, history=HISTORY, new=NEW, reserve=reserve)


def test_everything_is_kept_when_it_fits() -> None:
    assert fit(8192) == [system(), *HISTORY, *NEW]


def test_the_system_prompt_and_the_new_message_are_kept_without_history() -> None:
    prompt = fit_prompt(model(8192), system=SYSTEM, history=[], new=NEW, reserve=RESERVE)

    assert prompt == [system(), *NEW]


def test_without_a_system_prompt_there_is_no_system_message() -> None:
    prompt = fit(8192, sys=None)

    assert [m.role for m in prompt] == ["user", "assistant"] * 3 + ["user"]
    assert prompt == [*HISTORY, *NEW]


def test_the_oldest_turns_are_dropped_first() -> None:
    # Room for exactly the two newest turns.
    window = window_for([system(), *HISTORY[-4:], *NEW])

    assert fit(window) == [system(), *HISTORY[-4:], *NEW]
    # One token less and the older of the two turns goes too.
    assert fit(window - 1) == [system(), *HISTORY[-2:], *NEW]


def test_the_kept_history_never_starts_with_an_assistant_message() -> None:
    # Room for the newest three messages, the first of them an answer without its question.
    window = window_for([system(), *HISTORY[-3:], *NEW])

    prompt = fit(window)

    assert prompt == [system(), *HISTORY[-2:], *NEW]


@pytest.mark.parametrize("extra", range(0, 120, 7))
def test_any_window_keeps_system_and_new_fits_and_starts_history_with_a_question(
    extra: int,
) -> None:
    window = window_for([system(), *NEW]) + extra

    prompt = fit(window)

    assert prompt[0] == system()
    assert prompt[-1] == NEW[-1]
    assert TOKENIZER.count_prompt(prompt) <= window - RESERVE
    kept = prompt[1:-1]
    assert kept == HISTORY[len(HISTORY) - len(kept) :]
    if kept:
        assert kept[0].role == "user"


def test_a_larger_reply_reserve_leaves_less_room_for_history() -> None:
    window = window_for([system(), *HISTORY, *NEW])

    assert fit(window) == [system(), *HISTORY, *NEW]
    assert len(fit(window, reserve=RESERVE + 30)) < len(HISTORY) + 2


def test_a_message_that_cannot_fit_is_refused_and_the_error_says_why() -> None:
    huge = [user("x" * 4000)]
    info = model(512)

    with pytest.raises(ContextWindowExceeded) as caught:
        fit_prompt(info, system=SYSTEM, history=HISTORY, new=huge, reserve=RESERVE)

    error = caught.value
    used = TOKENIZER.count_prompt([system(), *huge])
    assert error.code == "context_length_exceeded"
    assert error.status == 400
    assert error.param == "messages"
    assert f"{used} tokens" in error.message
    assert f"room for {512 - RESERVE} prompt tokens" in error.message
    assert "512" in error.message
    assert "'tiny'" in error.message


def test_the_system_prompt_counts_against_the_new_message() -> None:
    # The new message fits alone but not together with the system prompt.
    window = window_for([system(), *NEW]) - 1

    fit_prompt(model(window), system=None, history=[], new=NEW, reserve=RESERVE)
    with pytest.raises(ContextWindowExceeded):
        fit_prompt(model(window), system=SYSTEM, history=[], new=NEW, reserve=RESERVE)


def test_max_tokens_as_large_as_the_window_is_refused_as_max_tokens() -> None:
    info = model(2048)

    with pytest.raises(ContextWindowExceeded) as caught:
        reply_budget(info, 2048, 512)

    assert caught.value.param == "max_tokens"
    assert "2048" in caught.value.message
    with pytest.raises(ContextWindowExceeded):
        reply_budget(info, 10_000, 512)


def test_max_tokens_below_the_window_is_the_reply_budget() -> None:
    assert reply_budget(model(2048), 2047, 512) == 2047
    assert reply_budget(model(2048), 100, 512) == 100


def test_without_max_tokens_the_budget_is_the_default_capped_by_a_quarter_window() -> None:
    assert reply_budget(model(8192), None, 512) == 512
    assert reply_budget(model(1024), None, 512) == 256
