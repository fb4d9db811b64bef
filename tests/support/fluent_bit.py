"""A model of the Fluent Bit configurations in deploy/logging, for tests that cannot run
Fluent Bit: it reads the configurations and applies the rules they state (the CRI and
Docker parsers with their multiline joining, the kubernetes filter's merge_log, the nest
and modify steps, Loki's labels) to container-runtime lines, giving the records Fluent Bit
would store. Also the captured Axon log lines those lines are built from."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "logging"
#: The two configurations, one per log store; both read and shape logs alike.
CONFIGS = ("fluent-bit-opensearch.yaml", "fluent-bit-loki.yaml")
#: Lines ``axon serve`` wrote (one JSON object each), captured from real turns.
CAPTURED = ROOT / "tests" / "unit" / "deploy" / "fixtures" / "axon-log-lines.jsonl"

#: The ids every Axon log line carries; they must reach the stores as fields.
IDS = ("request_id", "session_id", "trace_id", "span_id")

#: A pod as the API server describes it to the kubernetes filter.
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
#: The file the container runtime writes that pod's stdout and stderr to.
LOG_FILE = (
    f"/var/log/containers/{POD['pod_name']}_{POD['namespace_name']}_"
    f"{POD['container_name']}-{POD['docker_id']}.log"
)
#: The time containerd stamps on every line here.
CRI_TIME = "2025-01-31T14:02:11.123456789Z"

#: Settings every filter has; the modify filter's other settings are its rules.
FILTER_COMMON = {"name", "match", "match_regex", "alias", "log_level"}


def load(name: str) -> dict[str, Any]:
    """A file of deploy/logging (a configuration or the parsers file), as YAML reads it."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return data


def on(value: Any) -> bool:
    """Fluent Bit's booleans (YAML reads on/off as booleans, Fluent Bit as strings)."""
    return value is True or str(value).lower() in {"on", "true", "yes", "1"}


def values(value: Any) -> list[str]:
    """A setting given once or as a list (a key Fluent Bit accepts several times)."""
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def comma_list(value: Any) -> list[str]:
    """A setting's items, given as a list, comma-separated, or both."""
    return [item.strip() for v in values(value) for item in v.split(",") if item.strip()]


def parsers_file(config: dict[str, Any]) -> dict[str, Any]:
    """The parsers file a configuration's service section names."""
    return load(config["service"]["parsers_file"])


def python_regex(onigmo: str) -> re.Pattern[str]:
    """Fluent Bit's Onigmo named groups, ``(?<name>...)``, in Python's spelling."""
    return re.compile(re.sub(r"\(\?<(?![=!])", "(?P<", onigmo))


def captured_lines() -> list[str]:
    """The captured Axon log lines, as ``axon serve`` wrote them (blank lines left out)."""
    return [line for line in CAPTURED.read_text().splitlines() if line.strip()]


def by_name(entries: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The one plugin or parser of that name (fails if there is none, or several)."""
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
    """The nest filter's lift: the fields of ``nested_under`` become top-level fields,
    named with ``add_prefix``."""
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


Filter = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
#: The filters the configurations use, by plugin name: each maps a record and the
#: filter's settings to the record it passes on.
FILTERS: dict[str, Filter] = {"kubernetes": kubernetes, "nest": nest, "modify": modify}


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
