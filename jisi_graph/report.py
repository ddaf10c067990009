"""An evaluation's report: the records it holds, and its JSON, table, markdown and plot forms.

Accuracies are fractions in [0, 1] in the JSON and percentages in the table and the markdown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jisi_graph.scoring import ROUTED_ONLY_NOTE, MethodResult, Outcome
from jisi_graph.state import Decision


@dataclass(frozen=True)
class RowResult:
    """One row of the evaluation, for debugging: the graph's decision and each method's pick."""

    id: str
    dataset: str
    decision: dict[str, Any] | None
    error: str | None
    methods: dict[str, dict[str, Any]]

    @classmethod
    def of(
        cls,
        row_id: str,
        dataset: str,
        decision: Decision | None,
        error: str | None,
        outcomes: Mapping[str, Sequence[Outcome]],
        position: int,
    ) -> RowResult:
        """The row at `position` of every method's outcomes, with a summary of the decision."""
        summary = None
        if decision is not None:
            summary = {
                "answer_source": decision.answer_source,
                "mode": decision.mode,
                "aggregation_method": decision.aggregation_method,
                "votable": decision.votable,
                "switch_n": decision.switch_n,
                "probes": decision.probes,
                "candidates": [
                    {"model": c.model, "routing_score": c.routing_score, "answered": c.answered}
                    for c in decision.candidates
                ],
                "cost_usd": decision.cost_usd,
                "fallback": decision.fallback,
            }
        return cls(
            id=row_id,
            dataset=dataset,
            decision=summary,
            error=error,
            methods={
                name: {
                    "pick": o[position].pick,
                    "score": o[position].score,
                    "cost": o[position].cost,
                }
                for name, o in outcomes.items()
            },
        )


@dataclass
class EvalReport:
    """Every method's results, how the graph behaved, how the run was set up, and each row."""

    methods: dict[str, MethodResult]
    jisi: dict[str, Any]
    run: dict[str, Any]
    rows: list[RowResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (without the per-row records, which `write_rows` writes)."""
        return {
            "methods": {name: result.to_dict() for name, result in self.methods.items()},
            "jisi": self.jisi,
            "run": self.run,
        }

    @property
    def datasets(self) -> list[str]:
        """The datasets evaluated, in order of first appearance."""
        names: dict[str, None] = {}
        for result in self.methods.values():
            names.update(dict.fromkeys(result.per_dataset))
        return list(names)


def write_json(report: EvalReport, path: str | Path) -> None:
    """Write the JSON report."""
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def write_rows(report: EvalReport, path: str | Path) -> None:
    """Write one JSON line per evaluated row."""
    with open(path, "w", encoding="utf-8") as out:
        for row in report.rows:
            record = {
                "id": row.id,
                "dataset": row.dataset,
                "decision": row.decision,
                "error": row.error,
                "methods": row.methods,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _table_cells(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    datasets = report.datasets
    header = ["method", "macro %", "micro %", *(f"{d} %" for d in datasets), "cost USD"]
    body = [
        [
            name,
            _percent(r.accuracy_macro),
            _percent(r.accuracy_micro),
            *(_percent(r.per_dataset[d]) if d in r.per_dataset else "-" for d in datasets),
            f"{r.cost_usd:.4f}",
        ]
        for name, r in report.methods.items()
    ]
    return header, body


def format_table(report: EvalReport) -> str:
    """The methods as a plain-text table, aligned for a terminal."""
    header, body = _table_cells(report)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def render_markdown(report: EvalReport) -> str:
    """The report as markdown: run settings, the methods table, the graph's behaviour."""
    run = report.run
    header, body = _table_cells(report)
    lines = [
        "# JiSi evaluation",
        "",
        f"- data: `{run.get('data')}` (split `{run.get('split')}`, {run.get('rows')} rows)",
        f"- bank: `{run.get('bank')}`",
        f"- pool: {', '.join(run.get('pool') or [])}",
        f"- wall time: {run.get('wall_seconds')} s; commit: `{run.get('commit')}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
        *("| " + " | ".join(row) + " |" for row in body),
        "",
        f"Accuracy: macro is the mean over datasets, micro over rows. Cost: the total over the "
        f"{run.get('rows')} rows.",
        "",
    ]
    router_only = report.methods.get("jisi-router-only")
    if router_only is not None and "cost_usd_routed_only" in router_only.extra:
        routed_only = float(router_only.extra["cost_usd_routed_only"])
        lines += [
            f"jisi-router-only costs {router_only.cost_usd:.4f} USD counting its probes (the "
            f"honest cost above), or {routed_only:.4f} USD with the {ROUTED_ONLY_NOTE}.",
            "",
        ]
    if "jisi-paper" in report.methods:
        lines += [
            "jisi-paper is the same graph over the same rows with the paper's configuration "
            "(the bank's calibration ignored); jisi uses the calibrated knobs listed below. "
            "query-knn routes by the support-set scores of the paper's configuration.",
            "",
        ]
    lines += ["## The graph's behaviour", ""]
    lines += [f"- {key}: {_plain(value)}" for key, value in report.jisi.items()]
    lines += ["", "## Knobs", "", "```json", json.dumps(run.get("context"), indent=2), "```", ""]
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return json.dumps(value) if value else "none"
    return str(value)


_COLOURS = {"jisi": "tab:red", "reference": "tab:green", "single": "tab:gray"}
_LABEL_STEP_PT = 9.0
_LABEL_GAP_PT = 4.0
_CHAR_WIDTH_PT = 4.3


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two (left, bottom, width, height) boxes intersect."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _kind(name: str) -> str:
    return name.split(":", 1)[0] if ":" in name else name.split("-", 1)[0]


def write_plot(report: EvalReport, path: str | Path) -> None:
    """Plot macro accuracy against total cost (log scale), one labelled point per method.

    A method that cost nothing cannot sit on a log axis; it is drawn at the left edge and its
    label says so. Labels of points that (nearly) coincide are stacked instead of overlapping.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = [r.cost_usd for r in report.methods.values() if r.cost_usd > 0]
    floor = min(positive) / 2 if positive else 1e-6
    points = [
        (
            name,
            result.cost_usd if result.cost_usd > 0 else floor,
            100 * result.accuracy_macro,
            name if result.cost_usd > 0 else f"{name} (cost 0)",
        )
        for name, result in report.methods.items()
    ]
    figure, axes = plt.subplots(figsize=(10, 6.5))
    for name, cost, accuracy, _ in points:
        axes.scatter(cost, accuracy, color=_COLOURS.get(_kind(name), "tab:blue"), s=36, zorder=3)
    axes.set_xscale("log")
    figure.canvas.draw()
    pixels_per_point = figure.dpi / 72.0
    placed: list[tuple[float, float, float, float]] = []
    for _, cost, accuracy, label in sorted(points, key=lambda p: (-p[2], p[1])):
        x, y = axes.transData.transform((cost, accuracy))
        left = x + _LABEL_GAP_PT * pixels_per_point
        width = len(label) * _CHAR_WIDTH_PT * pixels_per_point
        height = _LABEL_STEP_PT * pixels_per_point
        offset = _LABEL_GAP_PT
        while any(
            _overlaps((left, y + offset * pixels_per_point, width, height), box) for box in placed
        ):
            offset -= _LABEL_STEP_PT
        placed.append((left, y + offset * pixels_per_point, width, height))
        shifted = offset != _LABEL_GAP_PT
        axes.annotate(
            label,
            (cost, accuracy),
            fontsize=7,
            xytext=(_LABEL_GAP_PT, offset),
            textcoords="offset points",
            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if shifted else None,
        )
    axes.set_xlabel("total cost (USD, log scale)")
    axes.set_ylabel("macro accuracy (%)")
    axes.set_title(
        f"{Path(str(report.run.get('data', ''))).name} ({report.run.get('split')}, "
        f"{report.run.get('rows')} rows)"
    )
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
