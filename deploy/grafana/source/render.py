"""Dashboards as Grafana's JSON model: panels laid out on the grid, wired to the datasource."""

from __future__ import annotations

from typing import Any

from source.panels import Dashboard, Panel, Row, Target

#: The datasource `provisioning/datasources/axon.yml` defines.
DATASOURCE_UID = "axon-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
GRID_WIDTH = 24
_MODEL_QUERY = "label_values(axon_build_info, model)"
_MODEL_VARIABLE: dict[str, Any] = {
    "allValue": ".*",
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    "datasource": DATASOURCE,
    "definition": _MODEL_QUERY,
    "hide": 0,
    "includeAll": True,
    "label": "Model",
    "multi": True,
    "name": "model",
    "options": [],
    "query": {
        "qryType": 1,
        "query": _MODEL_QUERY,
        "refId": "PrometheusVariableQueryEditor-VariableQuery",
    },
    "refresh": 2,  # on time range change: a new worker's model appears
    "regex": "",
    "skipUrlSync": False,
    "sort": 1,
    "type": "query",
}


def _target_json(target: Target, ref: str, panel: Panel) -> dict[str, Any]:
    out: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": target.expr,
        "instant": panel.instant,
        "legendFormat": target.legend,
        "range": not panel.instant,
        "refId": ref,
    }
    if panel.kind == "table":
        out["format"] = "table"
    return out


def _field_defaults(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
        "mappings": [],
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in panel.thresholds],
        },
        "unit": panel.unit,
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.kind == "timeseries":
        defaults["min"] = 0
        defaults["custom"] = {
            "axisLabel": panel.axis_label,
            "drawStyle": "line",
            "fillOpacity": 30 if panel.stacked else 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stacked else "none"},
        }
    return defaults


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "colorMode": "value",
            "graphMode": "none" if panel.instant else "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    if panel.kind == "table":
        return {"cellHeight": "sm", "showHeader": True}
    return {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out: dict[str, Any] = {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": _field_defaults(panel), "overrides": []},
        "gridPos": grid,
        "id": panel_id,
        "options": _options(panel),
        "targets": [_target_json(t, refs[i], panel) for i, t in enumerate(panel.targets)],
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.kind == "table":
        # One row per label set; the time column says nothing in an instant table.
        out["transformations"] = [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": "processes"},
                },
            }
        ]
    return out


def _row_json(row: Row, panel_id: int, y: int) -> dict[str, Any]:
    return {
        "collapsed": False,
        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
        "id": panel_id,
        "panels": [],
        "title": row.title,
        "type": "row",
    }


def _panels_json(items: tuple[Panel | Row, ...]) -> list[dict[str, Any]]:
    """Lay the items out left to right, wrapping at the grid's width; a row starts a line."""
    out: list[dict[str, Any]] = []
    x = y = line_height = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row) or x + item.width > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        if isinstance(item, Row):
            out.append(_row_json(item, panel_id, y))
            y += 1
            continue
        grid = {"h": item.height, "w": item.width, "x": x, "y": y}
        out.append(_panel_json(item, panel_id, grid))
        x += item.width
        line_height = max(line_height, item.height)
    return out


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": dashboard.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,  # a shared crosshair: stages line up in time across panels
        "id": None,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["axon"],
                "targetBlank": False,
                "title": "Axon dashboards",
                "type": "dashboards",
            }
        ],
        "panels": _panels_json(dashboard.items),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["axon"],
        "templating": {"list": [_MODEL_VARIABLE]},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
        "weekStart": "",
    }
