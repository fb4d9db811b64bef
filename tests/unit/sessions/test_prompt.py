"""Fitting a conversation into the model's context window."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from axon.core.errors import ContextWindowExceeded, InvalidRequest
from axon.core.types import ChatMessage
from axon.models.base import ModelInfo, Tokenizer
from axon.models.estimate import EstimateTokenizer
from axon.sessions.prompt import fit_prompt, reserve_for_reply

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
        reserve_for_reply(info, 2048)

    assert caught.value.param == "max_tokens"
    assert "2048" in caught.value.message
    with pytest.raises(ContextWindowExceeded):
        reserve_for_reply(info, 10_000)


def test_max_tokens_below_the_window_is_what_the_reply_reserves() -> None:
    assert reserve_for_reply(model(2048), 2047) == 2047
    assert reserve_for_reply(model(2048), 100) == 100


def test_without_max_tokens_the_budget_is_the_default_capped_by_a_quarter_window() -> None:
    assert reserve_for_reply(model(8192), None) == 512
    assert reserve_for_reply(model(1024), None) == 256


class CountingTokenizer(EstimateTokenizer):
    """Records the work it is asked for: characters tokenized, messages rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0
        self.rendered = 0
        self.prompts = 0

    def count_text(self, text: str) -> int:
        self.chars += len(text)
        return super().count_text(text)

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        self.prompts += 1
        self.rendered += len(messages)
        return super().count_prompt(messages)


def tiny_conversation(n: int) -> list[ChatMessage]:
    """``n`` one-character messages, alternating, the last a question."""
    return [
        ChatMessage(role="user" if (n - i) % 2 else "assistant", content=chr(0x4E00 + i))
        for i in range(n)
    ]


MANY = 4000


@pytest.mark.parametrize("window", [10**9, 4 * MANY], ids=["all-fit", "half-fit"])
def test_fitting_a_long_history_counts_each_message_a_constant_number_of_times(
    window: int,
) -> None:
    # Quadratic counting froze a server on a request of thousands of tiny messages; the
    # work is measured, not timed.
    tokenizer = CountingTokenizer()
    history = tiny_conversation(MANY)

    prompt = fit_prompt(
        ModelInfo("tiny", window, tokenizer), system=SYSTEM, history=history, new=NEW, reserve=0
    )

    text = sum(len(m.content) for m in [system(), *history, *NEW])
    assert tokenizer.chars <= 3 * text
    assert tokenizer.rendered <= 3 * len(history)
    # The required part and the result, plus two tiny renderings per role for its overhead.
    assert tokenizer.prompts <= 2 + 2 * len({"system", "user", "assistant"})
    assert prompt[0] == system()
    assert prompt[-1] == NEW[-1]
    assert prompt[1:-1] == history[len(history) - len(prompt) + 2 :]
    assert prompt[1].role == "user"
    if window < 10**9:
        assert len(prompt) < len(history)


def test_a_long_request_without_history_is_counted_once() -> None:
    tokenizer = CountingTokenizer()
    messages = tiny_conversation(MANY)

    prompt = fit_prompt(
        ModelInfo("tiny", 10**9, tokenizer), system=None, history=[], new=messages, reserve=0
    )

    assert prompt == messages
    assert tokenizer.prompts == 1
    assert tokenizer.rendered == MANY


class NumberingTokenizer(CountingTokenizer):
    """A template that numbers the messages it renders: a message's cost grows with its
    position, which no rendering of one message alone can show, so per-message costs
    undercount and only the real rendering tells."""

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        numbers = sum(len(str(i)) for i in range(1, len(messages) + 1))
        return super().count_prompt(messages) + numbers


def smallest_start_that_fits(tokenizer: Tokenizer, history: list[ChatMessage], budget: int) -> int:
    """What dropping one turn at a time finds: the first start at a question (or the end)
    at which the real count fits."""
    starts = [s for s, m in enumerate(history) if m.role != "assistant"] + [len(history)]
    return next(
        s for s in starts if tokenizer.count_prompt([system(), *history[s:], *NEW]) <= budget
    )


@pytest.mark.parametrize("window", [150, 400, 700, 1000])
def test_a_template_whose_costs_do_not_add_up_still_gets_the_longest_history_that_fits(
    window: int,
) -> None:
    tokenizer = NumberingTokenizer()
    history = tiny_conversation(200)

    prompt = fit_prompt(
        ModelInfo("tiny", window, tokenizer), system=SYSTEM, history=history, new=NEW, reserve=0
    )

    start = smallest_start_that_fits(NumberingTokenizer(), history, window)
    assert prompt == [system(), *history[start:], *NEW]
    assert tokenizer.count_prompt(prompt) <= window


def test_a_template_whose_costs_do_not_add_up_is_rendered_a_logarithmic_number_of_times() -> None:
    tokenizer = NumberingTokenizer()
    history = tiny_conversation(MANY)

    prompt = fit_prompt(
        ModelInfo("tiny", 4 * MANY, tokenizer),
        system=SYSTEM,
        history=history,
        new=NEW,
        reserve=0,
    )

    steps = math.ceil(math.log2(MANY))
    assert tokenizer.count_prompt(prompt) <= 4 * MANY
    assert 1000 < len(prompt) < MANY
    # As above, then a bisection: one rendering per step, none much longer than the result.
    assert tokenizer.prompts <= 2 + 2 * len({"system", "user", "assistant"}) + steps
    assert tokenizer.rendered <= 2 * steps * len(prompt)


def test_a_lone_surrogate_is_the_clients_error_not_a_crash() -> None:
    bad = [user("broken \ud800 text")]

    with pytest.raises(InvalidRequest) as caught:
        fit_prompt(model(8192), system=SYSTEM, history=[], new=bad, reserve=RESERVE)
    with pytest.raises(InvalidRequest):
        fit_prompt(model(8192), system=SYSTEM, history=bad, new=NEW, reserve=RESERVE)

    assert caught.value.param == "messages"
    assert caught.value.message == "message text is not valid Unicode (lone surrogate)"
