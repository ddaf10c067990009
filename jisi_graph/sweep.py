"""`jisi eval --sweep`: every method over its knob, as accuracy-cost curves, and their areas.

- **JiSi**: one full graph run over the test rows (replay models, vote aggregation) per grid
  point. A grid point is a set of context overrides (`{"cost_weight": 0.3}`), applied on top of
  the caller's `--set` knobs; the default grid sweeps `cost_weight` over [0, 1], with the probes
  and without them (`probe_margin` 0: one call by the support set). The runs share one bank,
  one replay pool and one cached embedder (`jisi_graph.embedding_cache`): the query and answer
  embeddings that dominate a run are computed once, so later points cost only the graph's own
  work. A point whose context equals the base run's reuses it.
- **Avengers-Pro**: alpha over [0, 1] (pure, fitted once on the bank).
- **Single models** (pool and references) and the base run's other methods: points.

The analysis (`jisi_graph.frontier`): the cost range is [cheapest, dearest] single pool model's
total cost; the area under each curve's staircase over that range (linear and log cost); and for
each single model, the cheapest JiSi (and Avengers-Pro) point at least as accurate.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jisi_graph.bank.store import Bank
from jisi_graph.baselines.avengers_pro import AvengersPro, score_picks
from jisi_graph.calibration import Calibration, apply_calibration
from jisi_graph.context import JisiContext
from jisi_graph.embedding import Embedder
from jisi_graph.embedding_cache import cache_stats, embed_queries, with_cache
from jisi_graph.evaluate import EvalConfigError, eval_context, evaluate, run_graph
from jisi_graph.frontier import Point, area_under, cheapest_match, envelope
from jisi_graph.report import EvalReport
from jisi_graph.scoring import MethodResult, run_statistics, score_jisi, summarise

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(21))
"""Avengers-Pro's alpha: 0 (cost only) to 1 (accuracy only), step 0.05."""
DEFAULT_COST_WEIGHTS: tuple[float, ...] = (
    *(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    *(0.4, 0.5, 0.6, 0.7),
    *(0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 1.0),
)
"""JiSi's `cost_weight`: 0 (quality only, the paper) to 1 (cost only), finer at both ends.

The routing changes fastest there: near 0, where the dearest models leave the top ranks,
and near 1, where the cost term's min-max scale crowds the cheap models together.
"""
FALLBACK_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""`switch_threshold` values swept when the context has no `cost_weight` knob."""
JISI = "jisi"
AVENGERS = "avengers-pro"
SINGLES = "single models"
POINT_METHODS = ("jisi", "query-knn", "best-single-on-bank", "avengers-pro", "oracle", "random")
"""Methods of the base run kept as points beside the single models."""


def default_jisi_grid() -> list[dict[str, Any]]:
    """The JiSi grid: `cost_weight` over [0, 1], twice.

    First with the probes as the base run has them, then with `probe_margin` 0 (route by the
    support set alone, one call: the cheap end of the frontier). Without a `cost_weight` knob:
    `switch_threshold`.
    """
    if "cost_weight" in JisiContext.model_fields:
        probed = [{"cost_weight": w} for w in DEFAULT_COST_WEIGHTS]
        return probed + [{"cost_weight": w, "probe_margin": 0.0} for w in DEFAULT_COST_WEIGHTS]
    return [{"switch_threshold": t} for t in FALLBACK_THRESHOLDS]


def parse_grid(items: Sequence[str]) -> list[dict[str, str]]:
    """`KNOB=V1,V2,...` strings as grid points: the cartesian product over the knobs given.

    Values stay strings (the context converts them); a knob given twice is an error.
    """
    axes: dict[str, list[str]] = {}
    for item in items:
        knob, sep, values = item.partition("=")
        knob = knob.strip()
        parsed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not knob or not parsed:
            raise EvalConfigError(f"--sweep-grid expects KNOB=V1,V2,..., got {item!r}")
        if knob in axes:
            raise EvalConfigError(f"--sweep-grid names {knob!r} twice")
        axes[knob] = list(dict.fromkeys(parsed))
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def parse_alphas(value: str | None) -> list[float]:
    """Comma-separated alphas in [0, 1] (default: `DEFAULT_ALPHAS`)."""
    if value is None:
        return list(DEFAULT_ALPHAS)
    try:
        alphas = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise EvalConfigError(f"--alphas expects numbers in [0, 1], got {value!r}") from None
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise EvalConfigError(f"--alphas expects numbers in [0, 1], got {value!r}")
    return list(dict.fromkeys(alphas))


def point_of(result: MethodResult, knobs: Mapping[str, Any], **extra: Any) -> Point:
    """A method's summary as a frontier point (macro accuracy)."""
    return Point(
        cost=result.cost_usd,
        accuracy=result.accuracy_macro,
        knobs=dict(knobs),
        accuracy_micro=result.accuracy_micro,
        extra=extra,
    )


def run_settings(
    context: JisiContext, calibration: Calibration | None, pool: Sequence[str]
) -> JisiContext:
    """The knobs a run really uses: `context` with the bank's calibration taken in.

    Two grid points with equal run settings give the same run (on a bank calibrated with
    `probe_margin` 0, `cost_weight=w` and `cost_weight=w, probe_margin=0` are one run). A knob the
    caller sets wins over the calibration, one left unset does not, so `cost_weight=0` set
    explicitly is not the base run on a bank calibrated with another cost weight.
    """
    return apply_calibration(context, calibration, pool)[0]


@dataclass
class SweepReport:
    """The curves, the points, and their analysis; the base run's report for its settings."""

    curves: dict[str, list[Point]]
    points: dict[str, Point]
    base: EvalReport
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def singles(self) -> dict[str, Point]:
        """The pool's single models, by report name (`single:<model>`)."""
        return {name: p for name, p in self.points.items() if name.startswith("single:")}

    @property
    def references(self) -> dict[str, Point]:
        """The reference models outside the pool, by report name (`reference:<model>`)."""
        return {name: p for name, p in self.points.items() if name.startswith("reference:")}

    def cost_range(self) -> tuple[float, float]:
        """(cheapest, dearest) single pool model's total cost."""
        costs = [p.cost for p in self.singles.values()]
        if not costs:
            raise ValueError("no single pool model to span the cost range")
        return min(costs), max(costs)

    def areas(self) -> dict[str, dict[str, float | None]]:
        """Area under each curve's staircase (and the single models') over the cost range."""
        low, high = self.cost_range()
        curves = {**self.curves, SINGLES: list(self.singles.values())}
        return {
            name: {
                "linear": area_under(points, low, high),
                "log": area_under(points, low, high, log=True),
            }
            for name, points in curves.items()
        }

    def matches(self) -> dict[str, dict[str, Any]]:
        """For each single and reference model: the cheapest point of each curve matching it."""
        found: dict[str, dict[str, Any]] = {}
        for name, target in {**self.singles, **self.references}.items():
            record: dict[str, Any] = {"accuracy_macro": target.accuracy, "cost_usd": target.cost}
            for curve, points in self.curves.items():
                match = cheapest_match(points, target.accuracy)
                record[curve] = None if match is None else match.to_dict()
                if match is not None and target.cost > 0:
                    record[curve]["cost_ratio"] = match.cost / target.cost
            found[name] = record
        return found

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        low, high = self.cost_range()
        return {
            "curves": {name: [p.to_dict() for p in pts] for name, pts in self.curves.items()},
            "envelopes": {
                name: [p.to_dict() for p in envelope(pts)] for name, pts in self.curves.items()
            },
            "points": {name: p.to_dict() for name, p in self.points.items()},
            "cost_range_usd": [low, high],
            "area_under_curve": self.areas(),
            "area_note": AREA_NOTE,
            "matches": self.matches(),
            "base": self.base.to_dict(),
            "run": self.run,
        }


AREA_NOTE = (
    "accuracy as a step function of cost, f(c) = best macro accuracy among a curve's points "
    "costing at most c (0 below its cheapest point), averaged over c in [cheapest, dearest single "
    "pool model's total cost]; 'log' averages over log c"
)


def sweep(
    data: str | Path,
    bank: str | Path | Bank,
    *,
    split: str = "test",
    pool: Sequence[str] | None = None,
    references: Sequence[str] = (),
    limit: int | None = None,
    concurrency: int = 4,
    overrides: Mapping[str, Any] | None = None,
    grid: Sequence[Mapping[str, Any]] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    embedder: Embedder | None = None,
    progress: bool = True,
) -> SweepReport:
    """The base run (the caller's knobs), then JiSi per grid point and Avengers-Pro per alpha.

    Every run uses the same rows, bank and cached embedder.

    Raises EvalConfigError for a setting that cannot be evaluated (checked before any run).
    """
    from jisi_graph.bank.loaders import load_rows
    from jisi_graph.graph import build_graph
    from jisi_graph.replay import replay_pool
    from jisi_graph.resources import Resources, load_bank_embedder

    overrides = dict(overrides or {})
    grid = [dict(point) for point in (grid if grid is not None else default_jisi_grid())]
    if not grid:
        raise EvalConfigError("the JiSi sweep grid is empty")
    contexts = [eval_context({**overrides, **point}) for point in grid]
    base_context = eval_context(overrides)
    loaded = bank if isinstance(bank, Bank) else Bank.load(bank)
    cached = with_cache(embedder or load_bank_embedder(loaded))
    started = time.perf_counter()
    base = evaluate(
        data,
        loaded,
        split=split,
        pool=pool,
        references=references,
        limit=limit,
        concurrency=concurrency,
        overrides=overrides,
        embedder=cached,
        progress=progress,
    )
    pool_models = list(base.run["pool"])
    base_stats = cache_stats(cached)
    misses_after_base = base_stats.misses if base_stats is not None else None
    rows = load_rows(data, split=split, limit=limit)
    resources = Resources(loaded, cached, replay_pool(rows, pool_models))
    graph = build_graph(resources)
    base_settings = run_settings(base_context, resources.calibration, pool_models)
    runs_so_far: list[tuple[JisiContext, Point]] = []
    jisi_points: list[Point] = []
    for point, context in zip(grid, contexts, strict=True):
        settings = run_settings(context, resources.calibration, pool_models)
        earlier = next((p for s, p in runs_so_far if s == settings), None)
        if earlier is not None:
            jisi_points.append(
                Point(
                    cost=earlier.cost,
                    accuracy=earlier.accuracy,
                    knobs=dict(point),
                    accuracy_micro=earlier.accuracy_micro,
                    extra={**earlier.extra, "same_run_as": dict(earlier.knobs)},
                )
            )
            continue
        if settings == base_settings:
            stats = base.jisi
            jisi_points.append(
                point_of(
                    base.methods["jisi"],
                    point,
                    mean_calls=stats.get("mean_calls"),
                    aggregated_fraction=stats.get("aggregated_fraction"),
                    error_rows=stats.get("row_errors"),
                )
            )
            runs_so_far.append((settings, jisi_points[-1]))
            continue
        began = time.perf_counter()
        runs = run_graph(graph, rows, context, concurrency=concurrency, progress=progress)
        decisions = [run.decision for run in runs]
        stats = run_statistics(decisions)
        jisi_points.append(
            point_of(
                summarise(rows, score_jisi(rows, decisions)),
                point,
                mean_calls=stats.get("mean_calls"),
                aggregated_fraction=stats.get("aggregated_fraction"),
                error_rows=sum(run.decision is None for run in runs),
                wall_seconds=round(time.perf_counter() - began, 2),
            )
        )
        runs_so_far.append((settings, jisi_points[-1]))
    router = AvengersPro.from_bank(loaded, pool_models)
    queries = embed_queries(cached, [row.query for row in rows])
    avengers = [
        point_of(summarise(rows, score_picks(rows, router.picks(queries, a))), {"alpha": a})
        for a in alphas
    ]
    points = {
        name: point_of(result, {})
        for name, result in base.methods.items()
        if name in POINT_METHODS or name.startswith(("single:", "reference:"))
    }
    stats_cache = cache_stats(cached)
    return SweepReport(
        curves={JISI: jisi_points, AVENGERS: avengers},
        points=points,
        base=base,
        run={
            **{k: v for k, v in base.run.items() if k not in {"wall_seconds", "context"}},
            "base_context": base.run.get("context"),
            "base_calibrated_knobs": base.run.get("calibrated_knobs"),
            "base_wall_seconds": base.run.get("wall_seconds"),
            "jisi_grid": grid,
            "alphas": list(alphas),
            "avengers_pro": {
                "clusters": router.profile.k,
                "top_p": router.top_p,
                "temperature": router.temperature,
            },
            "embedding_cache": None
            if stats_cache is None
            else {
                "hits": stats_cache.hits,
                "misses": stats_cache.misses,
                "misses_after_base_run": misses_after_base,
            },
            "wall_seconds": round(time.perf_counter() - started, 2),
        },
    )
