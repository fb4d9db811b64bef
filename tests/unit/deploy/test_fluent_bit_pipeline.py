"""Axon's real log lines (captured from ``axon serve``) through the Fluent Bit
configurations' rules: they become records whose fields the outputs rely on, with the ids
as fields, whether the container runtime wrote a line whole or in pieces.

Fluent Bit itself is not run here: support.fluent_bit applies the rules the
configurations state to the lines.
"""

from __future__ import annotations

import json

import pytest

from support.fluent_bit import (
    CAPTURED,
    CONFIGS,
    IDS,
    by_name,
    captured_lines,
    cri_lines,
    docker_lines,
    load,
    loki_entry,
    records,
)

# The user message of the turns the fixture was captured from (`axon serve` with the fake
# engine, which echoes it back): neither it nor the reply may be logged.
CAPTURE_PROMPT = "Describe the lighthouse keeper's seventh evening in violet detail"
CAPTURE_WORDS = ("lighthouse", "seventh", "violet", "you said")
# The fields every Axon log line has.
SCHEMA = ("timestamp", "level", "logger", "event", "service", *IDS)


def test_captured_lines_are_axon_json_without_the_prompt() -> None:
    lines = captured_lines()

    assert len(lines) >= 5
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert set(SCHEMA) <= entry.keys()
    turns = [entry for entry in entries if entry["event"] == "turn finished"]
    assert turns, "the fixture holds finished turns"
    assert all(turn["request_id"] and turn["trace_id"] for turn in turns)
    text = CAPTURED.read_text().lower()
    assert not [w for w in (CAPTURE_PROMPT.lower(), *CAPTURE_WORDS) if w in text]


@pytest.mark.parametrize("name", CONFIGS)
def test_captured_lines_become_records_with_their_fields(name: str) -> None:
    config = load(name)
    lines = captured_lines()

    got = records(config, [raw for line in lines for raw in cri_lines(line)], "axon-cri")

    assert len(got) == len(lines)
    for line, record in zip(lines, got, strict=True):
        written = json.loads(line)
        for key, value in written.items():
            assert record[key] == value, key
        assert {"namespace", "pod", "container", "app", "node"} <= record.keys()
        assert (record["namespace"], record["container"], record["app"]) == (
            "axon",
            "gateway",
            "axon",
        )
        assert "log" not in record
        assert "kubernetes" not in record
        assert not [k for k in record if k.startswith("k8s_") or k == "_p"]


def test_loki_gets_labels_from_the_record_and_ids_in_the_line() -> None:
    config = load("fluent-bit-loki.yaml")
    output = by_name(config["pipeline"]["outputs"], "loki")
    lines = captured_lines()
    got = records(config, [raw for line in lines for raw in cri_lines(line)], "axon-cri")

    for line, record in zip(lines, got, strict=True):
        labels, entry = loki_entry(output, record)
        written = json.loads(line)
        assert labels == {
            "service": written["service"],
            "level": written["level"],
            "namespace": "axon",
            "container": "gateway",
            "app": "axon",
        }
        for key in (*IDS, "event", "logger", "timestamp"):
            assert entry[key] == written[key], key


@pytest.mark.parametrize("mlp", ["axon-cri", "axon-docker"])
def test_a_line_the_runtime_split_is_joined_again(mlp: str) -> None:
    config = load("fluent-bit-opensearch.yaml")
    lines = captured_lines()
    longest = max(lines, key=len)
    whole = records(config, cri_lines(longest), "axon-cri")

    if mlp == "axon-cri":
        # Pieces of stdout with a stderr line between them: joined per stream.
        pieces = cri_lines(longest, piece=40)
        raw = [*pieces[:2], *cri_lines("boom", stream="stderr"), *pieces[2:]]
    else:
        raw = docker_lines(longest, piece=40)
    split = records(config, raw, mlp)

    joined = [r for r in split if r.get("stream") == "stdout" and "event" in r]
    assert len(joined) == 1
    fields = set(json.loads(longest))
    assert {k: joined[0][k] for k in fields} == {k: whole[0][k] for k in fields}


def test_a_line_that_is_not_json_is_kept_and_names_its_service() -> None:
    config = load("fluent-bit-loki.yaml")
    output = by_name(config["pipeline"]["outputs"], "loki")

    (record,) = records(
        config, cri_lines("Traceback (most recent call last):", stream="stderr"), "axon-cri"
    )

    assert record["log"] == "Traceback (most recent call last):"
    labels, _ = loki_entry(output, record)
    assert labels["service"] == "gateway"
