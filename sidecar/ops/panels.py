"""Small grafanalib constructors with this project's conventions baked in.

Every panel reads the ``${datasource}`` variable, has a description and a unit, and every
query is filtered by the ``$job`` / ``$instance`` variables (:func:`sel`). Keeping these in one
place is what lets the dashboards stay short and the normaliser stay generic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib import core as g

from sidecar.ops.normalize import DATASOURCE, DATASOURCE_VARIABLE

TARGET_MATCHERS = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"
_REF_IDS = "ABCDEFGHIJ"


def sel(metric: str, *matchers: str) -> str:
    """``metric{job=~"$job", instance=~"$instance", <matchers>}``."""
    return metric + "{" + ", ".join((TARGET_MATCHERS, *matchers)) + "}"


def grid(x: int, y: int, w: int, h: int) -> Any:
    return g.GridPos(h=h, w=w, x=x, y=y)


def targets(*queries: tuple[str, str]) -> list[Any]:
    """Range-query targets from ``(expr, legendFormat)`` pairs, refIds A, B, C ..."""
    return [
        g.Target(expr=expr, legendFormat=legend, refId=ref)
        for ref, (expr, legend) in zip(_REF_IDS, queries, strict=False)
    ]


def timeseries(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    pos: Any,
    *,
    overrides: list[dict[str, Any]] | None = None,
    stacking: str | None = None,
    draw: str = "line",
    thresholds: Sequence[tuple[float, str]] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    panel = g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        unit=unit,
        gridPos=pos,
        overrides=overrides or [],
        drawStyle=draw,
        fillOpacity=20 if stacking or draw == "bars" else 0,
        stacking={"mode": stacking, "group": "A"} if stacking else {"mode": "none"},
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        valueMin=minimum,
        valueMax=maximum,
        thresholdsStyleMode="line+area" if thresholds else "off",
    )
    if thresholds:
        panel.extraJson = {"fieldConfig": {"defaults": {"thresholds": _steps(thresholds)}}}
    return panel


def _steps(steps: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """Threshold steps; the first step is the base (Grafana colours lower values with it)."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def stat(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    pos: Any,
    *,
    thresholds: Sequence[tuple[float, str]],
    mappings: list[dict[str, Any]] | None = None,
    decimals: int | None = None,
) -> Any:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        format=unit,
        gridPos=pos,
        reduceCalc="lastNotNull",
        colorMode="background",
        graphMode="area",
        thresholds=_steps(thresholds)["steps"],
        mappings=mappings or [],
        decimals=decimals,
        noValue="no data",
    )


def state_timeline(
    title: str,
    description: str,
    queries: list[Any],
    pos: Any,
    *,
    mappings: list[dict[str, Any]],
    thresholds: Sequence[tuple[float, str]],
) -> Any:
    panel = g.StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        gridPos=pos,
        mappings=mappings,
        showValue="never",
    )
    panel.extraJson = {"fieldConfig": {"defaults": {"thresholds": _steps(thresholds)}}}
    return panel


def heatmap(title: str, description: str, queries: list[Any], unit: str, pos: Any) -> Any:
    panel = g.Heatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        gridPos=pos,
        dataFormat="tsbuckets",
    )
    panel.extraJson = {"fieldConfig": {"defaults": {"unit": unit}}}
    return panel


def value_map(values: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """A Grafana value mapping: raw value -> (text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                raw: {"text": text, "color": color, "index": i}
                for i, (raw, (text, color)) in enumerate(values.items())
            },
        }
    ]


def templating(variable_metric: str) -> Any:
    """``datasource``, ``job`` and ``instance`` variables, the instances of one job."""
    return g.Templating(
        list=[
            g.Template(
                name=DATASOURCE_VARIABLE,
                label="Data source",
                type="datasource",
                query="prometheus",
                hide=0,
            ),
            g.Template(
                name="job",
                label="Job",
                query=f"label_values({variable_metric}, job)",
                dataSource=DATASOURCE,
                includeAll=True,
                multi=True,
                allValue=".*",
                refresh=2,
            ),
            g.Template(
                name="instance",
                label="Instance",
                query=f'label_values({variable_metric}{{job=~"$job"}}, instance)',
                dataSource=DATASOURCE,
                includeAll=True,
                multi=True,
                allValue=".*",
                refresh=2,
            ),
        ]
    )


def dashboard(
    uid: str, title: str, description: str, tags: list[str], panels: list[Any], variable_metric: str
) -> Any:
    return g.Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=tags,
        timezone="browser",
        refresh="30s",
        time=g.Time("now-1h", "now"),
        templating=templating(variable_metric),
        panels=panels,
        graphTooltip=1,
    ).auto_panel_ids()
