"""The estimating tokenizer: per-message costs that add up, and text it cannot encode."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from axon.core.errors import InvalidRequest
from axon.core.types import ChatMessage
from axon.models.base import Tokenizer
from axon.models.estimate import GENERATION_PROMPT, PER_MESSAGE_OVERHEAD, EstimateTokenizer

CONVERSATION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Capital of France?"),
    ChatMessage(role="assistant", content="Paris."),
    ChatMessage(role="user", content="And of Italy? Ünïcödé 日本 😀"),
    ChatMessage(role="assistant", content=""),
]


@pytest.mark.parametrize("message", CONVERSATION, ids=lambda m: m.role)
def test_a_message_costs_what_one_more_of_it_adds_to_a_rendering(message: ChatMessage) -> None:
    tokenizer = EstimateTokenizer()

    assert tokenizer.count_message(message) == Tokenizer.count_message(tokenizer, message)


def test_a_prompt_costs_the_sum_of_its_messages_and_the_generation_prompt() -> None:
    tokenizer = EstimateTokenizer(bytes_per_token=3)

    costs = [tokenizer.count_message(m) for m in CONVERSATION]

    assert tokenizer.count_prompt(CONVERSATION) == GENERATION_PROMPT + sum(costs)
    assert tokenizer.count_message(CONVERSATION[-1]) == PER_MESSAGE_OVERHEAD


COUNTS: dict[str, Callable[[EstimateTokenizer, ChatMessage], int]] = {
    "prompt": lambda tokenizer, message: tokenizer.count_prompt([message]),
    "message": lambda tokenizer, message: tokenizer.count_message(message),
    "text": lambda tokenizer, message: tokenizer.count_text(message.content),
}


@pytest.mark.parametrize("count", COUNTS.values(), ids=COUNTS.keys())
@pytest.mark.parametrize("text", ["\ud800", "lone \udfff low", "pair \ud83d then nothing"])
def test_a_lone_surrogate_is_an_invalid_request(
    count: Callable[[EstimateTokenizer, ChatMessage], int], text: str
) -> None:
    message = ChatMessage(role="user", content=text)

    with pytest.raises(InvalidRequest) as caught:
        count(EstimateTokenizer(), message)

    assert caught.value.message == "message text is not valid Unicode (lone surrogate)"
    assert caught.value.param == "messages"
    assert caught.value.status == 400
