"""A real Prometheus (Debian's ``prometheus`` package) for end-to-end tests: it scrapes the
processes a test started, evaluates rule files, and answers PromQL over its HTTP API. Also
the metric names a PromQL expression selects, so a test can check that each one exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from support.server import free_port
from support.services import missing

READY_TIMEOUT_S = 60.0


def prometheus_binary() -> str:
    """The ``prometheus`` executable; skips locally (fails in CI) when it is not installed."""
    path = shutil.which("prometheus")
    if path is None:
        missing("prometheus is not installed (Debian's package: scripts/install-prometheus.sh)")
    return path


class PrometheusError(Exception):
    """Prometheus answered an API call with an error (a query it refused, for instance)."""


class Prometheus:
    """One Prometheus on a free port, with its data and log in ``work_dir``.

    ``jobs`` maps a scrape job's name to its targets (``host:port``); every job scrapes
    ``/metrics`` every ``interval_s`` seconds, and the rule files are evaluated as often.
    """

    def __init__(
        self,
        work_dir: Path,
        jobs: Mapping[str, Sequence[str]],
        rule_files: Sequence[Path] = (),
        *,
        interval_s: int = 1,
    ) -> None:
        self.work_dir = work_dir
        self.jobs = {job: list(targets) for job, targets in jobs.items()}
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.interval_s = interval_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = work_dir / "prometheus.yml"
        self.log_path = work_dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def config(self) -> dict[str, Any]:
        interval = f"{self.interval_s}s"
        return {
            "global": {
                "scrape_interval": interval,
                # The timeout may not exceed the interval (the default, 10s, would).
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.jobs.items()
            ],
        }

    def start(self) -> Prometheus:
        binary = prometheus_binary()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML, and needs no YAML library here.
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.work_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                # An invalid configuration or rule file ends it at once; its log says why.
                raise RuntimeError(f"prometheus exited early:\n{self.log_tail()}")
            try:
                if self.http.get("/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in time:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # The HTTP API.

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """``data`` of an ``/api/v1`` answer; :class:`PrometheusError` when it failed. Sent
        as a form POST where the API allows it, so that long expressions fit."""
        if path in ("query", "query_range"):
            r = self.http.post(f"/api/v1/{path}", data=dict(params or {}))
        else:
            r = self.http.get(f"/api/v1/{path}", params=dict(params or {}))
        try:
            body = r.json()
        except ValueError as exc:
            raise PrometheusError(f"HTTP {r.status_code}: {r.text[:500]}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate ``expr`` at one instant (now by default): its series, each with its
        ``metric`` labels and a ``value`` (``values`` for a range selector). A scalar or a
        string comes back as one series without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def metric_names(self) -> set[str]:
        """Every metric name Prometheus holds a series for: scraped, recorded, or its own
        (``up``, ``scrape_duration_seconds``, ``ALERTS`` ...)."""
        return set(self.api("label/__name__/values"))

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", {"state": "active"})["activeTargets"]
        return active

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    # Waiting for data.

    def wait_for(self, ready: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus: {what} not seen in {timeout_s:.0f}s")
            time.sleep(self.interval_s / 4)

    def wait_for_targets(self, timeout_s: float = 60) -> None:
        """Wait until every target is scraped successfully (Prometheus applies its targets
        a few seconds after it starts)."""
        expected = sum(len(targets) for targets in self.jobs.values())

        def all_up() -> bool:
            targets = self.targets()
            return len(targets) == expected and all(t["health"] == "up" for t in targets)

        try:
            self.wait_for(all_up, "every target up", timeout_s)
        except TimeoutError as exc:
            states = {t["scrapeUrl"]: (t["health"], t["lastError"]) for t in self.targets()}
            raise TimeoutError(f"{exc}: {states}") from None

    def wait_for_data_after(self, moment: float) -> None:
        """Wait until every target was scraped successfully at least one interval after
        ``moment`` (a ``time.time()``) and every rule group was evaluated after those
        scrapes, so that queries and recorded series both include what happened before
        ``moment``."""
        scraped: list[float] = []

        def fresh_scrapes() -> bool:
            targets = self.targets()
            times = [_timestamp(t["lastScrape"]) for t in targets if t["health"] == "up"]
            if len(times) < len(targets) or not targets or min(times) < moment + self.interval_s:
                return False
            scraped[:] = times
            return True

        self.wait_for(fresh_scrapes, "a scrape of every target after the traffic")
        self.wait_for(
            lambda: all(_timestamp(g["lastEvaluation"]) > max(scraped) for g in self.rule_groups()),
            "a rule evaluation after the last scrape",
        )


def _timestamp(rfc3339: str) -> float:
    # Go writes nanoseconds; Python reads at most microseconds.
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", rfc3339)).timestamp()


# The metric names a PromQL expression selects.

#: Words PromQL's lexer takes as keywords in any case: binary and set operators, grouping
#: and matching modifiers, aggregations, and the special numbers.
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "atan2",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "sum",
        "avg",
        "count",
        "min",
        "max",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "count_values",
        "quantile",
        "limitk",
        "limit_ratio",
        "inf",
        "nan",
    }
)
#: Keywords followed by a parenthesised list of label names, not an expression.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Numbers (hex, decimal, exponent) and durations (5m, 1h30m, 250ms) alike.
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[a-zA-Z0-9_]*")
# A range (``[5m]``) or a subquery's range and resolution (``[1h:1m]``, ``[1h:]``).
_RANGE = re.compile(r"\s*[0-9][0-9a-zA-Z]*\s*(?::\s*(?:[0-9][0-9a-zA-Z]*)?\s*)?")
_OPERATORS = frozenset("+-*/%^=!<>(),@")
_SPACE = re.compile(r"(?:\s+|#[^\n]*)*")


def metric_names_in(expr: str) -> set[str]:
    """Names of the metrics ``expr`` selects: its bare identifiers that are neither keywords
    nor function calls, plus ``{__name__="..."}`` matchers. Label names (in matchers and in
    ``by``/``on``/... lists), strings, numbers, durations and comments are skipped. Raises
    ``ValueError`` on anything PromQL does not allow, such as a leftover ``$variable``."""
    names: set[str] = set()
    i, n = 0, len(expr)

    def skip_space(j: int) -> int:
        match = _SPACE.match(expr, j)
        assert match is not None
        return match.end()

    def string_end(j: int) -> int:
        quote = expr[j]
        j += 1
        while j < n and expr[j] != quote:
            j += 2 if expr[j] == "\\" and quote != "`" else 1
        if j >= n:
            raise ValueError(f"unterminated string at {j} in {expr!r}")
        return j + 1

    def closing(j: int, close: str) -> int:
        """Index after the ``close`` that ends the group opened at ``j``, strings skipped."""
        opened = j
        j += 1
        while j < n and expr[j] != close:
            j = string_end(j) if expr[j] in "\"'`" else j + 1
        if j >= n:
            raise ValueError(f"unclosed {expr[opened]!r} at {opened} in {expr!r}")
        return j + 1

    while i < n:
        i = skip_space(i)
        if i >= n:
            break
        c = expr[i]
        if c in "\"'`":
            i = string_end(i)
        elif c == "{":
            end = closing(i, "}")
            names |= _names_in_matchers(expr[i + 1 : end - 1])
            i = end
        elif c == "[":
            end = closing(i, "]")
            if not _RANGE.fullmatch(expr, i + 1, end - 1):
                raise ValueError(f"not a range or subquery: {expr[i:end]!r} in {expr!r}")
            i = end
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            match = _NUMBER.match(expr, i)
            assert match is not None
            i = match.end()
        elif match := _IDENTIFIER.match(expr, i):
            word = match.group()
            i = skip_space(match.end())
            keyword = word.lower()
            if keyword in _LABEL_LISTS:
                if i < n and expr[i] == "(":
                    i = closing(i, ")")
            elif keyword in _KEYWORDS or (i < n and expr[i] == "("):
                pass
            else:
                names.add(word)
        elif c in _OPERATORS or c == ":":
            i += 1
        else:
            raise ValueError(f"unexpected {c!r} at {i} in {expr!r}")
    return names


_MATCHER = re.compile(
    r"""\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*"""
    r"""(?P<quote>["'`])(?P<value>(?:[^\\]|\\.)*?)(?P=quote)\s*(?:,|$)"""
)


def _names_in_matchers(body: str) -> set[str]:
    """The metric a ``{...}`` body names with ``__name__="..."`` (a regex names none)."""
    names: set[str] = set()
    i = 0
    while body[i:].strip():
        match = _MATCHER.match(body, i)
        if match is None:
            raise ValueError(f"cannot read label matchers {{{body}}}")
        if match["label"] == "__name__" and match["op"] == "=":
            names.add(match["value"])
        i = match.end()
    return names
