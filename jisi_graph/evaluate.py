"""The evaluation harness: run the JiSi graph itself over held-out rows, then score every method.

The graph runs with replay models (`jisi_graph.replay`), so nothing is called: each model answers
with its recorded answer, usage and cost. Aggregation is by vote, which returns one candidate's
own answer and can therefore be graded by that candidate's recorded score; LLM aggregation cannot
be graded from recorded rows and is refused. Scoring is `jisi_graph.scoring`; output is
`jisi_graph.report`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jisi_graph.bank.loaders import load_rows
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.baselines.avengers_pro import avengers_pro_outcomes
from jisi_graph.calibration import CalibrationError, apply_calibration
from jisi_graph.context import JisiContext, knob_value
from jisi_graph.embedding import Embedder
from jisi_graph.embedding_cache import embed_queries, with_cache
from jisi_graph.report import EvalReport, RowResult
from jisi_graph.scoring import (
    run_statistics,
    score_jisi,
    score_methods,
    score_query_knn,
    score_router_only,
    summarise_methods,
)
from jisi_graph.state import Decision

EVAL_DEFAULTS: dict[str, Any] = {"aggregation": "vote"}
"""Knobs the evaluation sets unless overridden: vote aggregation, gradable from records."""
UNGRADABLE_AGGREGATION = {"llm", "vote_or_llm"}
FIXED_KNOBS = {"bank", "pool"}
PAPER = "jisi-paper"
"""The method name of the uncalibrated run, reported beside `jisi` when the bank is calibrated."""


class EvalConfigError(ValueError):
    """The evaluation cannot run as asked: bad knob, unknown model, ungradable setting."""


@dataclass(frozen=True)
class RowRun:
    """The graph's run on one row: its decision, or the error it raised."""

    decision: Decision | None
    error: str | None = None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KNOB=VALUE` strings as a dict, values read as `jisi ask` reads them (`knob_value`)."""
    overrides: dict[str, Any] = {}
    for item in items:
        knob, sep, value = item.partition("=")
        if not sep or not knob.strip():
            raise EvalConfigError(f"--set expects KNOB=VALUE, got {item!r}")
        overrides[knob.strip()] = knob_value(value.strip())
    return overrides


def eval_context(overrides: Mapping[str, Any] | None = None) -> JisiContext:
    """The evaluation's context: vote aggregation plus the caller's overrides, validated."""
    overrides = dict(overrides or {})
    fixed = sorted(FIXED_KNOBS & set(overrides))
    if fixed:
        raise EvalConfigError(
            f"--set {fixed[0]} is not allowed here: the evaluation takes the bank from --bank "
            "and builds a replay pool from the data"
        )
    unknown = sorted(set(overrides) - set(JisiContext.model_fields))
    if unknown:
        raise EvalConfigError(
            f"unknown knob {unknown[0]!r}; knobs: {', '.join(sorted(JisiContext.model_fields))}"
        )
    if str(overrides.get("aggregation", "vote")) in UNGRADABLE_AGGREGATION:
        raise EvalConfigError(
            f"aggregation={overrides['aggregation']} cannot be evaluated from recorded rows: an "
            "LLM aggregator writes a new answer that no record grades; use aggregation=vote"
        )
    try:
        return JisiContext(**{**EVAL_DEFAULTS, **overrides})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise EvalConfigError(f"invalid --set value: {problems}") from None


def resolve_pool(bank: Bank, pool: Sequence[str] | None) -> list[str]:
    """The pool's models (default: the bank's); a model the bank does not know is an error."""
    if pool is None:
        return list(bank.models)
    names = list(dict.fromkeys(pool))
    if not names:
        raise EvalConfigError("the pool is empty")
    unknown = [name for name in names if name not in bank.models]
    if unknown:
        raise EvalConfigError(
            f"pool model{'s' if len(unknown) > 1 else ''} not in the bank: {', '.join(unknown)}; "
            f"the bank's models are: {', '.join(bank.models)}"
        )
    return names


def check_references(rows: Sequence[BankRow], references: Sequence[str]) -> list[str]:
    """The reference models, each of which must have a record in some row."""
    recorded = {name for row in rows for name in row.records}
    missing = [name for name in references if name not in recorded]
    if missing:
        raise EvalConfigError(
            f"reference model{'s' if len(missing) > 1 else ''} with no record in the rows: "
            f"{', '.join(missing)}"
        )
    return list(dict.fromkeys(references))


def run_graph(
    graph: Any,
    rows: Sequence[BankRow],
    context: JisiContext,
    *,
    concurrency: int = 4,
    progress: bool = True,
) -> list[RowRun]:
    """Invoke the graph on every row's query, `concurrency` rows at a time (threads).

    A row whose run raises is kept as an error; it never stops the others.
    """
    from tqdm.auto import tqdm

    def run_one(row: BankRow) -> RowRun:
        try:
            output = graph.invoke({"query": row.query}, context=context)
        except Exception as error:  # noqa: BLE001 - one failed row is a record, not a crash
            return RowRun(None, f"{type(error).__name__}: {error}")
        return RowRun(Decision.model_validate(output["decision"]), output.get("error"))

    results: list[RowRun | None] = [None] * len(rows)
    with (
        ThreadPoolExecutor(max_workers=max(1, concurrency)) as executor,
        tqdm(total=len(rows), desc="jisi eval", unit="row", disable=not progress) as bar,
    ):
        futures = {executor.submit(run_one, row): i for i, row in enumerate(rows)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    return [r if r is not None else RowRun(None, "not run") for r in results]


def row_id(row: BankRow, position: int) -> str:
    """A readable id of a data row: dataset/index, or dataset#position without an index."""
    return f"{row.dataset}/{row.index}" if row.index is not None else f"{row.dataset}#{position}"


def evaluate(
    data: str | Path,
    bank: str | Path | Bank,
    *,
    split: str = "test",
    pool: Sequence[str] | None = None,
    references: Sequence[str] = (),
    limit: int | None = None,
    concurrency: int = 4,
    overrides: Mapping[str, Any] | None = None,
    embedder: Embedder | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run the graph (replay models, vote aggregation) on the split's rows and score every method.

    `bank` is a bank directory or a loaded bank; `embedder` defaults to the bank's own.
    Raises EvalConfigError for a setting that cannot be evaluated.
    """
    from jisi_graph.graph import build_graph
    from jisi_graph.replay import replay_pool
    from jisi_graph.resources import Resources, load_bank_embedder

    context = eval_context(overrides)
    loaded = bank if isinstance(bank, Bank) else Bank.load(bank)
    pool_models = resolve_pool(loaded, pool)
    rows = load_rows(data, split=split, limit=limit)
    reference_models = check_references(rows, references)
    if embedder is None:
        embedder = load_bank_embedder(loaded)
    embedder = with_cache(embedder)
    try:
        resources = Resources(loaded, embedder, replay_pool(rows, pool_models))
    except CalibrationError as error:
        raise EvalConfigError(str(error)) from None
    requested = context
    context, calibrated_knobs, calibration_note = apply_calibration(
        context, resources.calibration, pool_models
    )
    graph = build_graph(resources)
    started = time.perf_counter()
    runs = run_graph(graph, rows, context, concurrency=concurrency, progress=progress)
    wall = time.perf_counter() - started
    decisions = [run.decision for run in runs]
    ability = dict(zip(loaded.models, loaded.comprehensive_ability().tolist(), strict=True))
    outcomes = score_methods(
        rows, decisions, pool_models, references=reference_models, bank_ability=ability
    )
    paper: dict[str, Any] | None = None
    if calibrated_knobs:
        # The same graph without the calibration, so the paper's configuration keeps its rows.
        paper_context = requested.model_copy(update={"calibrated": False})
        paper_started = time.perf_counter()
        paper_runs = run_graph(
            graph, rows, paper_context, concurrency=concurrency, progress=progress
        )
        paper_decisions = [run.decision for run in paper_runs]
        jisi_rows = {name: outcomes[name] for name in ("jisi", "jisi-router-only")}
        outcomes = {
            **jisi_rows,
            PAPER: score_jisi(rows, paper_decisions),
            f"{PAPER}-router-only": score_router_only(rows, paper_decisions)[0],
            **outcomes,
            # the baseline is plain query-kNN: the support set of the uncalibrated knobs
            "query-knn": score_query_knn(rows, paper_decisions, pool_models),
        }
        paper = {
            **run_statistics(paper_decisions),
            "row_errors": sum(decision is None for decision in paper_decisions),
            "wall_seconds": round(time.perf_counter() - paper_started, 2),
            "context": paper_context.model_dump(exclude=FIXED_KNOBS),
        }
    queries = embed_queries(embedder, [row.query for row in rows])  # cached by the graph's run
    outcomes["avengers-pro"] = avengers_pro_outcomes(loaded, pool_models, rows, queries)
    statistics = run_statistics(decisions)
    statistics["row_errors"] = sum(run.decision is None for run in runs)
    if paper is not None:
        statistics["paper_config"] = paper
    return EvalReport(
        methods=summarise_methods(rows, decisions, outcomes),
        jisi=statistics,
        run={
            "data": str(data),
            "bank": str(loaded.path) if loaded.path is not None else None,
            "split": split,
            "pool": pool_models,
            "references": reference_models,
            "rows": len(rows),
            "limit": limit,
            "concurrency": concurrency,
            "wall_seconds": round(wall, 2),
            "context": context.model_dump(exclude=FIXED_KNOBS),
            "calibrated_knobs": calibrated_knobs,
            "calibration": calibration_note or "the bank's calibration.json",
            "embedder": embedder.id,
            "commit": git_commit(),
        },
        rows=[
            RowResult.of(row_id(row, i), row.dataset, run.decision, run.error, outcomes, i)
            for i, (row, run) in enumerate(zip(rows, runs, strict=True))
        ],
    )


def git_commit() -> str | None:
    """The commit of the package's checkout ("+dirty" with local changes), if it is one."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
