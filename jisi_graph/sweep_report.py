"""A sweep's forms besides JSON: a terminal table, markdown, and the accuracy-cost plot.

Accuracies are percentages here (fractions in the JSON); costs are total USD over the rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jisi_graph.frontier import Point, envelope
from jisi_graph.sweep import SweepReport


def _knobs(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in knobs.items()) or "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _match_cell(match: Mapping[str, Any] | None) -> str:
    if match is None:
        return "none"
    ratio = match.get("cost_ratio")
    share = f", {100 * ratio:.0f}% of its cost" if ratio is not None else ""
    return (
        f"{_knobs(match['knobs'])}: {_pct(match['accuracy_macro'])} % for "
        f"{match['cost_usd']:.4f} USD{share}"
    )


def _same_run(point: Point) -> str:
    same = point.extra.get("same_run_as")
    return f" (same run as {_knobs(same)})" if same else ""


def curve_rows(report: SweepReport) -> list[list[str]]:
    """One table row per curve point: method, knobs, macro %, micro %, cost, on the envelope."""
    rows = []
    for name, points in report.curves.items():
        upper = {id(p) for p in envelope(points)}
        for point in points:
            rows.append(
                [
                    name,
                    _knobs(point.knobs) + _same_run(point),
                    _pct(point.accuracy),
                    _pct(point.accuracy_micro),
                    f"{point.cost:.4f}",
                    "yes" if id(point) in upper else "",
                ]
            )
    return rows


def format_sweep_table(report: SweepReport) -> str:
    """The curves, the areas and the matches as plain text for a terminal."""
    header = ["method", "knobs", "macro %", "micro %", "cost USD", "envelope"]
    body = curve_rows(report)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    low, high = report.cost_range()
    lines += ["", f"area under the curve over [{low:.4f}, {high:.4f}] USD (linear / log cost):"]
    for name, area in report.areas().items():
        lines.append(f"  {name}: {_pct(area['linear'])} / {_pct(area['log'])}")
    lines += ["", "cheapest point matching each single model's macro accuracy:"]
    for name, match in report.matches().items():
        cells = "; ".join(
            f"{curve}: {_match_cell(match[curve])}" for curve in report.curves if curve in match
        )
        lines.append(
            f"  {name} ({_pct(match['accuracy_macro'])} %, {match['cost_usd']:.4f} USD): {cells}"
        )
    return "\n".join(lines)


def _table(header: Sequence[str], body: Sequence[Sequence[str]], right: int) -> list[str]:
    aligns = ["---"] * (len(header) - right) + ["---:"] * right
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(aligns) + "|",
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def render_sweep_markdown(report: SweepReport) -> str:
    """The sweep as markdown: settings, areas, matches, every curve point, the other points."""
    run = report.run
    low, high = report.cost_range()
    areas = report.areas()
    lines = [
        "# JiSi frontier sweep",
        "",
        f"- data: `{run.get('data')}` (split `{run.get('split')}`, {run.get('rows')} rows)",
        f"- bank: `{run.get('bank')}`; pool: {', '.join(run.get('pool') or [])}",
        f"- JiSi grid: {json.dumps(run.get('jisi_grid'))}; Avengers-Pro alphas: "
        f"{', '.join(str(a) for a in run.get('alphas') or [])} "
        f"({json.dumps(run.get('avengers_pro'))})",
        f"- wall time: {run.get('wall_seconds')} s (base run {run.get('base_wall_seconds')} s); "
        f"embedding cache: {json.dumps(run.get('embedding_cache'))}; commit: `{run.get('commit')}`",
        "",
        "## Area under the curve",
        "",
        f"Over the single pool models' cost range [{low:.4f}, {high:.4f}] USD: {AREA_TEXT}",
        "",
        *_table(
            ["curve", "AUC (linear cost) %", "AUC (log cost) %"],
            [[name, _pct(a["linear"]), _pct(a["log"])] for name, a in areas.items()],
            2,
        ),
        "",
        "## Cheapest point matching each single model",
        "",
        *_table(
            ["model", "macro %", "cost USD", *report.curves],
            [
                [
                    name,
                    _pct(m["accuracy_macro"]),
                    f"{m['cost_usd']:.4f}",
                    *(_match_cell(m.get(curve)) for curve in report.curves),
                ]
                for name, m in report.matches().items()
            ],
            0,
        ),
        "",
        "## Curves",
        "",
        *_table(
            ["method", "knobs", "macro %", "micro %", "cost USD", "on envelope"],
            curve_rows(report),
            4,
        ),
        "",
        "## Points (base run)",
        "",
        *_table(
            ["method", "macro %", "micro %", "cost USD"],
            [
                [name, _pct(p.accuracy), _pct(p.accuracy_micro), f"{p.cost:.4f}"]
                for name, p in report.points.items()
            ],
            3,
        ),
        "",
        "## Base run knobs",
        "",
        "The caller's context (a grid point's knobs are set on top of it, and a knob the caller "
        "sets wins over the bank's calibration):",
        "",
        "```json",
        json.dumps(run.get("base_context"), indent=2),
        "```",
        "",
        "Knobs taken from the bank's calibration in the base run: "
        f"`{json.dumps(run.get('base_calibrated_knobs'))}`",
        "",
    ]
    return "\n".join(lines)


AREA_TEXT = (
    "accuracy is a step function of cost (the best macro accuracy among a curve's points costing "
    "at most c, 0 below its cheapest point), averaged over c on that range (linear), or over "
    "log c (log). A curve entirely dearer than the dearest single model scores 0."
)

_CURVE_STYLE = {
    "jisi": {"color": "tab:red", "marker": "o"},
    "avengers-pro": {"color": "tab:blue", "marker": "s"},
}
_POINT_STYLE = {
    "jisi": ("tab:red", "*", "JiSi (base run)"),
    "query-knn": ("tab:purple", "D", "query-kNN"),
    "best-single-on-bank": ("black", "s", "best single on bank"),
}
_SINGLE_MARKERS = ["o", "v", "^", "<", ">", "p", "h", "8", "d", "P", "*", "H"]


def _short(name: str) -> str:
    model = name.split(":", 1)[1] if ":" in name else name
    return model.rsplit("/", 1)[-1]


def write_sweep_plot(report: SweepReport, path: str | Path) -> None:
    """Plot macro accuracy against total cost (log scale), one line per curve.

    Each curve's step envelope is dashed; single and reference models are markers named in the
    legend, which sits outside the axes; the shaded band is the single models' cost range.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(12.5, 7))
    positive = [p.cost for pts in report.curves.values() for p in pts if p.cost > 0]
    positive += [p.cost for p in report.points.values() if p.cost > 0]
    floor = min(positive) / 2 if positive else 1e-6

    def x(point: Point) -> float:
        return point.cost if point.cost > 0 else floor

    for name, points in report.curves.items():
        style = _CURVE_STYLE.get(name, {"color": "tab:orange", "marker": "^"})
        axes.plot(
            [x(p) for p in points],
            [100 * p.accuracy for p in points],
            linestyle="-",
            linewidth=1.0,
            markersize=4,
            alpha=0.8,
            label=f"{name} ({len(points)} points)",
            **style,
        )
        upper = envelope(points)
        if upper:
            xs = [x(p) for p in upper] + [max(positive) if positive else x(upper[-1])]
            ys = [100 * p.accuracy for p in upper] + [100 * upper[-1].accuracy]
            axes.step(xs, ys, where="post", linestyle="--", linewidth=0.8, color=style["color"])
    for name, (colour, marker, label) in _POINT_STYLE.items():
        point = report.points.get(name)
        if point is not None:
            axes.scatter(
                x(point),
                100 * point.accuracy,
                facecolors="none",
                edgecolors=colour,
                linewidths=1.5,
                marker=marker,
                s=140,
                zorder=4,
                label=label,
            )
    others = [*report.singles.items(), *report.references.items()]
    for i, (name, point) in enumerate(others):
        reference = name.startswith("reference:")
        axes.scatter(
            x(point),
            100 * point.accuracy,
            color="tab:green" if reference else plt.get_cmap("Dark2")(i % 8),
            marker=_SINGLE_MARKERS[i % len(_SINGLE_MARKERS)],
            s=45,
            zorder=3,
            label=f"{'ref' if reference else 'single'}: {_short(name)}",
        )
    low, high = report.cost_range()
    axes.axvspan(low, high, color="0.5", alpha=0.06, lw=0)
    axes.set_xscale("log")
    axes.set_xlabel("total cost over the test rows (USD, log scale)", fontsize=11)
    axes.set_ylabel("macro accuracy (%)", fontsize=11)
    axes.set_title(
        f"{Path(str(report.run.get('data', ''))).name}: accuracy vs cost "
        f"({report.run.get('split')}, {report.run.get('rows')} rows)",
        fontsize=12,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
