"""The Fluent Bit configurations in deploy/logging: they parse, name only settings their
plugins have, reference parsers that exist, give Loki only low-cardinality labels, and
turn Axon's real log lines (captured from ``axon serve``) into records whose fields the
outputs rely on, with the ids as fields.

Fluent Bit itself is not run here: the records are computed by applying the rules the
configurations state (the CRI regex and its multiline joining from parsers.yaml, the
kubernetes filter's merge_log, the nest and modify steps, Loki's labels) to the lines.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy" / "logging"
CONFIGS = ("fluent-bit-opensearch.yaml", "fluent-bit-loki.yaml")
CAPTURED = Path(__file__).parent / "fixtures" / "axon-log-lines.jsonl"
# The user message of the turns the fixture was captured from (`axon serve` with the fake
# engine, which echoes it back): neither it nor the reply may be logged.
CAPTURE_PROMPT = "Describe the lighthouse keeper's seventh evening in violet detail"
CAPTURE_WORDS = ("lighthouse", "seventh", "violet", "you said")

IDS = ("request_id", "session_id", "trace_id", "span_id")
SCHEMA = ("timestamp", "level", "logger", "event", "service", *IDS)
# Loki makes a stream per label set: only fields with a few values may be labels.
LOW_CARDINALITY = {"service", "level", "namespace", "container", "app"}

# A pod as the API server describes it to the kubernetes filter.
POD = {
    "pod_name": "axon-gateway-5d8f7c9b4-x2v7q",
    "namespace_name": "axon",
    "pod_id": "0b7c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d",
    "labels": {
        "app.kubernetes.io/name": "axon",
        "app.kubernetes.io/component": "gateway",
        "pod-template-hash": "5d8f7c9b4",
    },
    "host": "node-a",
    "container_name": "gateway",
    "docker_id": "4f" * 32,
    "container_hash": "ghcr.io/axon/axon@sha256:" + "ab" * 32,
    "container_image": "ghcr.io/axon/axon:0.1.0",
}
LOG_FILE = (
    f"/var/log/containers/{POD['pod_name']}_{POD['namespace_name']}_"
    f"{POD['container_name']}-{POD['docker_id']}.log"
)
CRI_TIME = "2025-01-31T14:02:11.123456789Z"

# Settings each plugin has (Fluent Bit's config maps), plus the ones every input or
# output has; a misspelt key is ignored by some plugins and fatal to others.
INPUT_COMMON = {"name", "tag", "alias", "log_level", "storage.type", "mem_buf_limit", "threaded"}
FILTER_COMMON = {"name", "match", "match_regex", "alias", "log_level"}
OUTPUT_COMMON = {
    "name",
    "match",
    "match_regex",
    "alias",
    "log_level",
    "host",
    "port",
    "retry_limit",
    "workers",
    "storage.total_limit_size",
    "tls",
    "tls.verify",
    "tls.verify_hostname",
    "tls.ca_file",
    "tls.crt_file",
    "tls.key_file",
    "tls.vhost",
}
PLUGIN_KEYS = {
    "tail": INPUT_COMMON
    | {
        "path",
        "exclude_path",
        "path_key",
        "db",
        "db.sync",
        "db.locking",
        "db.journal_mode",
        "refresh_interval",
        "rotate_wait",
        "read_from_head",
        "skip_long_lines",
        "skip_empty_lines",
        "buffer_chunk_size",
        "buffer_max_size",
        "multiline.parser",
        "parser",
        "ignore_older",
    },
    "kubernetes": FILTER_COMMON
    | {
        "buffer_size",
        "kube_url",
        "kube_ca_file",
        "kube_token_file",
        "kube_tag_prefix",
        "merge_log",
        "merge_log_key",
        "merge_log_trim",
        "merge_parser",
        "keep_log",
        "labels",
        "annotations",
        "k8s-logging.parser",
        "k8s-logging.exclude",
        "use_kubelet",
        "kube_meta_cache_ttl",
    },
    "nest": FILTER_COMMON
    | {"operation", "wildcard", "nest_under", "nested_under", "add_prefix", "remove_prefix"},
    "modify": FILTER_COMMON
    | {
        "set",
        "add",
        "remove",
        "remove_wildcard",
        "remove_regex",
        "rename",
        "hard_rename",
        "copy",
        "hard_copy",
        "move_to_start",
        "move_to_end",
        "condition",
    },
    "opensearch": OUTPUT_COMMON
    | {
        "index",
        "type",
        "suppress_type_name",
        "http_user",
        "http_passwd",
        "logstash_format",
        "logstash_prefix",
        "logstash_dateformat",
        "time_key",
        "include_tag_key",
        "buffer_size",
        "path",
        "pipeline",
        "generate_id",
        "id_key",
        "replace_dots",
        "trace_output",
        "trace_error",
        "compress",
    },
    "loki": OUTPUT_COMMON
    | {
        "uri",
        "tenant_id",
        "labels",
        "label_keys",
        "remove_keys",
        "structured_metadata",
        "line_format",
        "drop_single_key",
        "auto_kubernetes_labels",
        "http_user",
        "http_passwd",
        "bearer_token",
        "compress",
    },
}
SERVICE_KEYS = {
    "flush",
    "grace",
    "log_level",
    "parsers_file",
    "http_server",
    "http_listen",
    "http_port",
    "health_check",
    "hc_errors_count",
    "hc_retry_failure_count",
    "hc_period",
    "storage.path",
    "storage.sync",
    "storage.checksum",
    "storage.backlog.mem_limit",
    "storage.max_chunks_up",
}
PARSER_KEYS = {"name", "format", "regex", "time_key", "time_format", "time_keep", "types"}
MULTILINE_KEYS = {
    "name",
    "type",
    "match_string",
    "negate",
    "key_content",
    "key_group",
    "key_pattern",
    "parser",
    "flush_timeout",
    "rules",
}
REQUIRED = {
    "tail": {"path", "tag"},
    "opensearch": {"host", "port", "tls", "logstash_format", "suppress_type_name", "trace_error"},
    "loki": {"host", "port", "line_format"},
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return data


def on(value: Any) -> bool:
    """Fluent Bit's booleans (YAML reads on/off as booleans, Fluent Bit as strings)."""
    return value is True or str(value).lower() in {"on", "true", "yes", "1"}


def values(value: Any) -> list[str]:
    """A setting given once or as a list (a key Fluent Bit accepts several times)."""
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def comma_list(value: Any) -> list[str]:
    return [item.strip() for v in values(value) for item in v.split(",") if item.strip()]


def parsers_file(config: dict[str, Any]) -> dict[str, Any]:
    return load(config["service"]["parsers_file"])


def python_regex(onigmo: str) -> re.Pattern[str]:
    """Fluent Bit's Onigmo named groups, ``(?<name>...)``, in Python's spelling."""
    return re.compile(re.sub(r"\(\?<(?![=!])", "(?P<", onigmo))


def captured_lines() -> list[str]:
    return [line for line in CAPTURED.read_text().splitlines() if line.strip()]


def by_name(entries: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [entry for entry in entries if entry["name"] == name]
    return found


# -- The runtime's side: how containerd / CRI-O and Docker write a container's stdout.


def cri_lines(line: str, *, piece: int | None = None, stream: str = "stdout") -> list[str]:
    """The line as containerd writes it: whole (F), or cut into pieces (P..., then F)."""
    if piece is None or len(line) <= piece:
        return [f"{CRI_TIME} {stream} F {line}"]
    pieces = [line[i : i + piece] for i in range(0, len(line), piece)]
    return [f"{CRI_TIME} {stream} P {p}" for p in pieces[:-1]] + [
        f"{CRI_TIME} {stream} F {pieces[-1]}"
    ]


def docker_lines(line: str, *, piece: int | None = None) -> list[str]:
    """The line as Docker's json-file driver writes it: the last piece ends with \\n."""
    text = line + "\n"
    pieces = [text] if piece is None else [text[i : i + piece] for i in range(0, len(text), piece)]
    return [
        json.dumps({"log": p, "stream": "stdout", "time": "2025-01-31T14:02:11.1234Z"})
        for p in pieces
    ]


# -- Fluent Bit's side, as the configurations state it.


def multiline(
    raw: list[str], mlp: dict[str, Any], parsers: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Records from raw lines through one multiline parser of type ``equal`` (CRI) or
    ``endswith`` (Docker): its regex or JSON parser, then joining ``key_content`` per
    ``key_group`` until the piece that ends a line."""
    parser = by_name(parsers["parsers"], mlp["parser"])
    content, group = mlp["key_content"], mlp["key_group"]
    pending: dict[str, dict[str, Any]] = {}
    for text in raw:
        if parser["format"] == "regex":
            match = python_regex(parser["regex"]).match(text)
            assert match, f"{parser['name']} does not match {text!r}"
            fields: dict[str, Any] = match.groupdict()
        else:
            assert parser["format"] == "json"
            fields = json.loads(text)
        if mlp["type"] == "equal":
            ends = fields[mlp["key_pattern"]] == str(mlp["match_string"])
        else:
            assert mlp["type"] == "endswith"
            ends = fields[content].endswith(mlp["match_string"])
        started = pending.pop(fields[group], None)
        if started is not None:
            started[content] += fields[content]
            fields = started
        if ends:
            yield fields
        else:
            pending[fields[group]] = fields
    assert not pending, "a partial line was never finished"


def kubernetes(record: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The kubernetes filter: pod metadata under ``kubernetes``; with merge_log, a JSON
    object in ``log`` becomes the record's fields (string values trimmed of the line
    end); with keep_log off, ``log`` itself goes once merged."""
    record = dict(record)
    if on(settings.get("merge_log")) and isinstance(record.get("log"), str):
        try:
            merged = json.loads(record["log"])
        except ValueError:
            merged = None
        if isinstance(merged, dict):
            if not on(settings.get("keep_log", True)):
                del record["log"]
            trimmed = {k: v.rstrip("\r\n") if isinstance(v, str) else v for k, v in merged.items()}
            if settings.get("merge_log_key"):
                record[settings["merge_log_key"]] = trimmed
            else:
                record.update(trimmed)
    meta = dict(POD)
    if not on(settings.get("labels", True)):
        del meta["labels"]
    record["kubernetes"] = meta
    return record


def nest(record: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    assert settings["operation"] == "lift", "only lift is modelled here"
    record = dict(record)
    inner = record.pop(settings["nested_under"], None)
    if isinstance(inner, dict):
        for key, value in inner.items():
            record[settings.get("add_prefix", "") + key] = value
    return record


def modify(record: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The modify filter's rules, in the order the configuration gives them."""
    record = dict(record)
    for op, given in settings.items():
        if op in FILTER_COMMON:
            continue
        for rule in values(given):
            key, _, arg = rule.partition(" ")
            arg = arg.strip()
            if op in ("rename", "copy") and key in record and arg not in record:
                record[arg] = record[key]
                if op == "rename":
                    del record[key]
            elif (op == "add" and key not in record) or op == "set":
                record[key] = arg
            elif op == "remove":
                record.pop(key, None)
            elif op == "remove_wildcard":
                record = {k: v for k, v in record.items() if not k.startswith(key)}
            elif op not in ("rename", "copy", "add"):
                raise AssertionError(f"modify rule {op} is not modelled here")
    return record


FILTERS = {"kubernetes": kubernetes, "nest": nest, "modify": modify}


def tag_of(config: dict[str, Any]) -> str:
    """The tail input's tag for LOG_FILE: its ``*`` becomes the path, / as dots."""
    tail = by_name(config["pipeline"]["inputs"], "tail")
    return str(tail["tag"]).replace("*", LOG_FILE.lstrip("/").replace("/", "."))


def records(config: dict[str, Any], raw: list[str], mlp_name: str) -> list[dict[str, Any]]:
    """Raw container-log lines through the configuration's multiline parser and filters."""
    parsers = parsers_file(config)
    mlp = by_name(parsers["multiline_parsers"], mlp_name)
    tag = tag_of(config)
    out = []
    for record in multiline(raw, mlp, parsers):
        for step in config["pipeline"]["filters"]:
            if fnmatch.fnmatchcase(tag, str(step["match"])):
                record = FILTERS[step["name"]](record, step)
        out.append(record)
    return out


def accessor(record: dict[str, Any], pattern: str) -> Any:
    """A record accessor, ``$key`` or ``$key['sub']['subsub']``."""
    head, *subs = re.findall(r"^\$([^\[]+)|\['([^']+)'\]", pattern)
    value: Any = record.get(head[0])
    for _, sub in subs:
        value = value.get(sub) if isinstance(value, dict) else None
    return value


def loki_labels(output: dict[str, Any]) -> dict[str, str]:
    """Loki's label names and what each is taken from (a record accessor or a constant)."""
    labels = {}
    for item in comma_list(output.get("labels", [])):
        if item.startswith("$"):
            labels[re.findall(r"\w+", item)[-1]] = item
        else:
            name, _, value = item.partition("=")
            labels[name.strip()] = value.strip()
    for item in comma_list(output.get("label_keys", [])):
        assert item.startswith("$"), "label_keys entries are record accessors"
        labels[re.findall(r"\w+", item)[-1]] = item
    return labels


def loki_entry(
    output: dict[str, Any], record: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stream labels and the JSON line Loki receives for a record: fields that became
    labels leave the line, and so do ``remove_keys``."""
    labels = {
        name: accessor(record, source) if source.startswith("$") else source
        for name, source in loki_labels(output).items()
    }
    used = {
        re.findall(r"^\$([^\[]+)", source)[0]
        for source in loki_labels(output).values()
        if source.startswith("$") and "[" not in source
    }
    removed = used | set(comma_list(output.get("remove_keys", [])))
    assert output["line_format"] == "json"
    line = json.loads(json.dumps({k: v for k, v in record.items() if k not in removed}))
    return {k: v for k, v in labels.items() if v is not None}, line


# -- The configurations themselves.


@pytest.mark.parametrize("name", CONFIGS)
def test_config_has_the_yaml_sections_and_known_plugins(name: str) -> None:
    config = load(name)

    assert set(config) <= {"env", "includes", "service", "pipeline", "parsers", "multiline_parsers"}
    assert set(config["service"]) <= SERVICE_KEYS
    assert set(config["pipeline"]) == {"inputs", "filters", "outputs"}
    for section in ("inputs", "filters", "outputs"):
        for plugin in config["pipeline"][section]:
            known = PLUGIN_KEYS.get(plugin["name"])
            assert known is not None, f"{name}: no plugin {plugin['name']} is expected here"
            unknown = {k.lower() for k in plugin} - known
            assert not unknown, f"{name}: {plugin['name']} has no setting {unknown}"
            missing = REQUIRED.get(plugin["name"], set()) - set(plugin)
            assert not missing, f"{name}: {plugin['name']} needs {missing}"


def test_parsers_file_has_only_parser_settings() -> None:
    parsers = load("parsers.yaml")

    assert set(parsers) == {"parsers", "multiline_parsers"}
    for parser in parsers["parsers"]:
        assert set(parser) <= PARSER_KEYS, parser["name"]
        assert parser["format"] in {"regex", "json"}
    for mlp in parsers["multiline_parsers"]:
        assert set(mlp) <= MULTILINE_KEYS, mlp["name"]
        assert mlp["type"] in {"regex", "endswith", "equal"}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parser_named_exists(name: str) -> None:
    config = load(name)
    assert (DEPLOY / config["service"]["parsers_file"]).is_file()
    parsers = parsers_file(config)
    regular = {p["name"] for p in parsers["parsers"]}
    joined = {p["name"] for p in parsers["multiline_parsers"]}

    for section in config["pipeline"].values():
        for plugin in section:
            assert set(comma_list(plugin.get("multiline.parser", []))) <= joined
            assert set(comma_list(plugin.get("parser", []))) <= regular
    for mlp in parsers["multiline_parsers"]:
        assert mlp["parser"] in regular


def test_both_configs_read_and_shape_logs_alike() -> None:
    opensearch, loki = (load(name) for name in CONFIGS)

    assert opensearch["service"] == loki["service"]
    assert opensearch["pipeline"]["inputs"] == loki["pipeline"]["inputs"]
    assert opensearch["pipeline"]["filters"] == loki["pipeline"]["filters"]


@pytest.mark.parametrize("name", CONFIGS)
def test_tail_reads_axon_pods_and_the_kubernetes_filter_finds_them(name: str) -> None:
    config = load(name)
    tail = by_name(config["pipeline"]["inputs"], "tail")
    kube = by_name(config["pipeline"]["filters"], "kubernetes")

    assert fnmatch.fnmatchcase(LOG_FILE, tail["path"])
    assert not fnmatch.fnmatchcase(LOG_FILE.replace("/axon-", "/redis-"), tail["path"])
    # The filter finds the pod from the tag: the prefix must be what tail put before the path.
    assert tag_of(config).startswith(kube["kube_tag_prefix"])
    assert on(kube["merge_log"])
    assert not on(kube["keep_log"])
    assert "merge_log_key" not in kube, "Axon's fields (the ids among them) stay top level"
    for step in config["pipeline"]["filters"] + config["pipeline"]["outputs"]:
        assert fnmatch.fnmatchcase(tag_of(config), str(step["match"])), step["name"]


def test_opensearch_output_writes_daily_axon_indices_over_tls() -> None:
    output = by_name(load("fluent-bit-opensearch.yaml")["pipeline"]["outputs"], "opensearch")

    assert output["index"] == "axon-logs"
    assert on(output["logstash_format"])
    assert output["logstash_prefix"] == "axon-logs"
    assert on(output["suppress_type_name"])
    assert on(output["trace_error"])
    assert on(output["tls"])
    assert on(output.get("tls.verify", True))


def test_loki_labels_are_few_and_never_ids() -> None:
    output = by_name(load("fluent-bit-loki.yaml")["pipeline"]["outputs"], "loki")
    labels = loki_labels(output)

    assert set(labels) <= LOW_CARDINALITY
    assert {"service", "level"} <= set(labels)
    for name, source in labels.items():
        assert not re.search(r"_?id\b|pod\b", f"{name} {source}"), (name, source)
    assert not on(output.get("auto_kubernetes_labels", False))
    assert not set(comma_list(output.get("remove_keys", []))) & set(IDS)


# -- Axon's real lines through the rules.


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
