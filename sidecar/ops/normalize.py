"""Turn grafanalib 0.7.1's JSON into what Grafana 10+ writes itself.

grafanalib writes an old dashboard model: ``null`` for every unset option, string datasources,
keys Grafana dropped years ago (``span``, ``height``, ``hideControls`` ...) and the pre-9.1
heatmap. Grafana's dashboard JSON schema (``additionalProperties: false`` nearly everywhere)
rejects all of that. Rather than patching field by field, this module keeps, for each object of
the schema, only the properties the schema knows, drops nulls, and rewrites what changed shape:

* every datasource (panel, target, variable) becomes ``{"type": "prometheus", "uid":
  "${datasource}"}``, the dashboard's own data source variable: no hard-coded UID;
* Prometheus targets keep only the query fields Grafana's Prometheus plugin reads;
* heatmaps get the current heatmap options (pre-bucketed Prometheus data, exemplars on).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 38  # Grafana 10.0; newer Grafana versions migrate it forward on load.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}

_DASHBOARD_KEYS = frozenset(
    [
        "id",
        "uid",
        "title",
        "description",
        "revision",
        "gnetId",
        "tags",
        "timezone",
        "editable",
        "graphTooltip",
        "time",
        "fiscalYearStartMonth",
        "liveNow",
        "weekStart",
        "refresh",
        "schemaVersion",
        "version",
        "panels",
        "templating",
        "annotations",
        "links",
    ]
)
_PANEL_KEYS = frozenset(
    [
        "type",
        "id",
        "pluginVersion",
        "tags",
        "targets",
        "title",
        "description",
        "transparent",
        "datasource",
        "gridPos",
        "links",
        "repeat",
        "repeatDirection",
        "maxPerRow",
        "maxDataPoints",
        "transformations",
        "interval",
        "timeFrom",
        "timeShift",
        "hideTimeOverride",
        "libraryPanel",
        "options",
        "fieldConfig",
    ]
)
_ROW_KEYS = frozenset(
    ["type", "collapsed", "title", "datasource", "gridPos", "id", "panels", "repeat"]
)
_FIELD_CONFIG_KEYS = frozenset(
    [
        "displayName",
        "displayNameFromDS",
        "description",
        "path",
        "writeable",
        "filterable",
        "unit",
        "decimals",
        "min",
        "max",
        "mappings",
        "thresholds",
        "color",
        "links",
        "noValue",
        "custom",
    ]
)
_VARIABLE_KEYS = frozenset(
    [
        "type",
        "name",
        "label",
        "hide",
        "skipUrlSync",
        "description",
        "query",
        "datasource",
        "current",
        "multi",
        "options",
        "refresh",
        "sort",
        "includeAll",
        "allValue",
        "regex",
    ]
)
_TARGET_KEYS = frozenset(
    [
        "datasource",
        "expr",
        "legendFormat",
        "refId",
        "format",
        "instant",
        "range",
        "exemplar",
        "interval",
    ]
)

HEATMAP_OPTIONS: dict[str, Any] = {
    "calculate": False,  # Prometheus buckets are already buckets
    "cellGap": 1,
    "color": {
        "exponent": 0.5,
        "fill": "dark-orange",
        "mode": "scheme",
        "reverse": False,
        "scale": "exponential",
        "scheme": "Oranges",
        "steps": 64,
    },
    "exemplars": {"color": "rgba(255,0,255,0.7)"},
    "filterValues": {"le": 1e-9},
    "legend": {"show": True},
    "rowsFrame": {"layout": "auto"},
    "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": True},
    "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
    "showValue": "never",
}
HEATMAP_CUSTOM: dict[str, Any] = {
    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
    "scaleDistribution": {"type": "linear"},
}


def drop_nulls(value: Any) -> Any:
    """``value`` without ``None`` anywhere (the schema has no nullable property)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    return value


def _keep(obj: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k in allowed}


def _target(target: dict[str, Any]) -> dict[str, Any]:
    out = _keep(target, _TARGET_KEYS)
    out["datasource"] = dict(DATASOURCE)
    if not out.get("interval"):
        out.pop("interval", None)
    return out


def _field_config(field_config: dict[str, Any]) -> dict[str, Any]:
    defaults = _keep(field_config.get("defaults", {}), _FIELD_CONFIG_KEYS)
    thresholds = defaults.get("thresholds")
    if not isinstance(thresholds, dict) or not thresholds.get("steps"):
        defaults.pop("thresholds", None)
    if not defaults.get("color"):
        defaults.pop("color", None)
    return {"defaults": defaults, "overrides": list(field_config.get("overrides", []))}


def _heatmap(panel: dict[str, Any]) -> dict[str, Any]:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "s")
    options = {**HEATMAP_OPTIONS, "yAxis": {**HEATMAP_OPTIONS["yAxis"], "unit": unit}}
    panel["options"] = options  # the pre-9.1 heatmap options mean nothing to Grafana 10
    defaults = {"custom": dict(HEATMAP_CUSTOM), "unit": unit}
    panel["fieldConfig"] = {"defaults": defaults, "overrides": []}
    for target in panel["targets"]:
        target["format"] = "heatmap"
        target["exemplar"] = True  # a slow bucket links to the trace that landed in it
        target["legendFormat"] = "{{le}}"
    return panel


def _panel(panel: dict[str, Any]) -> dict[str, Any]:
    if panel.get("type") == "row":
        row = _keep(panel, _ROW_KEYS)
        row["panels"] = [_panel(p) for p in row.get("panels", [])]
        row.setdefault("collapsed", False)
        return row
    extra = panel.get("extraJson") or {}
    out = _keep(panel, _PANEL_KEYS)
    out.pop("maxDataPoints", None)  # grafanalib's 100 is too coarse; let Grafana decide
    if not out.get("links"):
        out.pop("links", None)
    if not out.get("transformations"):
        out.pop("transformations", None)
    if not out.get("interval"):
        out.pop("interval", None)
    out["datasource"] = dict(DATASOURCE)
    out["targets"] = [_target(t) for t in panel.get("targets", [])]
    out["fieldConfig"] = _field_config(panel.get("fieldConfig", {}))
    out["options"] = dict(panel.get("options") or {})
    out = _merge(out, extra)
    return _heatmap(out) if out["type"] == "heatmap" else out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` deep-merged into ``base`` (what grafanalib's ``extraJson`` means)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


def _variable(variable: dict[str, Any]) -> dict[str, Any]:
    out = _keep(variable, _VARIABLE_KEYS)
    if out.get("type") == "query":
        out["datasource"] = dict(DATASOURCE)
    current = out.get("current")
    if not isinstance(current, dict) or "text" not in current or "value" not in current:
        out.pop("current", None)
    if not out.get("options"):
        out.pop("options", None)
    if not out.get("regex"):
        out.pop("regex", None)
    return out


def normalize_dashboard(raw: dict[str, Any]) -> dict[str, Any]:
    """Grafana-10 dashboard JSON from grafanalib's ``to_json_data()`` output (JSON-decoded)."""
    data = drop_nulls(raw)
    out = _keep(data, _DASHBOARD_KEYS)
    out["schemaVersion"] = SCHEMA_VERSION
    out["panels"] = [_panel(p) for p in data.get("panels", [])]
    out["templating"] = {"list": [_variable(v) for v in data.get("templating", {}).get("list", [])]}
    out["annotations"] = {"list": list(data.get("annotations", {}).get("list", []))}
    # grafanalib's timepicker carries ``time_options``, which Grafana 10 no longer has; the
    # defaults are what we want anyway.
    out.pop("timepicker", None)
    if not out.get("description"):
        out.pop("description", None)
    out.pop("id", None)  # instance-local: Grafana assigns it on import
    out.pop("version", None)
    return out
