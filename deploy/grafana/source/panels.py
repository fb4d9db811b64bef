"""The dashboards' building blocks: panels, their targets, rows, and the dashboards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

from source.promql import quantile

Kind = Literal["timeseries", "stat", "table"]
#: Threshold steps: the base colour (value None) first, then (value, colour) upwards.
Thresholds = tuple[tuple[float | None, str], ...]


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = "__auto"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    #: True when the panel must show data after ordinary successful chat traffic.
    traffic: bool
    kind: Kind = "timeseries"
    width: int = 12
    height: int = 8
    stacked: bool = False
    axis_label: str = ""
    decimals: int | None = None
    thresholds: Thresholds = ((None, "green"),)
    #: One evaluation at the end of the range (tables; 30-day windows that barely move).
    instant: bool = False


@dataclass(frozen=True)
class Row:
    title: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    items: tuple[Panel | Row, ...]

    @property
    def file(self) -> str:
        return f"{self.uid}.json"


@dataclass(frozen=True)
class Query:
    """One panel query, for a test that runs them all against a live Prometheus."""

    dashboard: str
    panel: str
    expr: str
    traffic: bool


class Options(TypedDict, total=False):
    """A panel's optional fields (see `Panel`)."""

    width: int
    height: int
    stacked: bool
    axis_label: str
    decimals: int | None
    thresholds: Thresholds
    instant: bool


def graph(
    title: str,
    description: str,
    unit: str,
    *targets: Target,
    traffic: bool,
    **options: Unpack[Options],
) -> Panel:
    return Panel(title, description, unit, targets, traffic, **options)


def stat(
    title: str,
    description: str,
    unit: str,
    *targets: Target,
    traffic: bool,
    **options: Unpack[Options],
) -> Panel:
    return Panel(title, description, unit, targets, traffic, kind="stat", **options)


def quantiles(
    histogram: str, *matchers: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> tuple[Target, ...]:
    return tuple(Target(quantile(q, histogram, *matchers), f"p{round(q * 100)}") for q in qs)
