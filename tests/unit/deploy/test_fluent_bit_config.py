"""The Fluent Bit configurations in deploy/logging, as written: they parse, name only
settings their plugins have, reference parsers that exist, read Axon's pods, and give Loki
only low-cardinality labels."""

from __future__ import annotations

import fnmatch
import re

import pytest

from support.fluent_bit import (
    CONFIGS,
    DEPLOY,
    FILTER_COMMON,
    IDS,
    LOG_FILE,
    by_name,
    comma_list,
    load,
    loki_labels,
    on,
    parsers_file,
    tag_of,
)

# Loki makes a stream per label set: only fields with a few values may be labels.
LOW_CARDINALITY = {"service", "level", "namespace", "container", "app"}

# Settings each plugin has (Fluent Bit's config maps), plus the ones every input or
# output has; a misspelt key is ignored by some plugins and fatal to others.
INPUT_COMMON = {"name", "tag", "alias", "log_level", "storage.type", "mem_buf_limit", "threaded"}
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
