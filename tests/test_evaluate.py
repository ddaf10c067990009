"""Tests of the evaluation harness: pure scoring by hand, the report, the CLI, one real run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import SHARED_DATA
from typer.testing import CliRunner

from jisi_graph.bank.schema import BankRow
from jisi_graph.evaluate import (
    EvalConfigError,
    check_references,
    eval_context,
    parse_overrides,
    resolve_pool,
)
from jisi_graph.report import (
    EvalReport,
    format_table,
    render_markdown,
    write_json,
    write_plot,
    write_rows,
)
from jisi_graph.scoring import (
    ROUTED_ONLY_NOTE,
    Outcome,
    best_on_bank,
    fallback_kind,
    router_only_cost,
    run_statistics,
    score_jisi,
    score_methods,
    score_oracle,
    score_query_knn,
    score_random,
    score_router_only,
    score_single,
    summarise,
    summarise_methods,
)
from jisi_graph.state import Candidate, Decision, ModelCall

ZEROEVAL = SHARED_DATA / "zeroeval_gsm8k_math.jsonl.gz"
POOL = ["A", "B", "C"]

# --------------------------------------------------------------------------------------------
# Hand-built rows and decisions
#
# row  dataset  scores A B C  (R)   costs A B C  (R)
# r1   x        1 0 1        (1)   .3 .1 .2    (1)
# r2   x        0 0 0        (0)   .3 .1 .2    (1)
# r3   y        1 1 -        (1)   .3 .1 -     (1)     C has no record on r3
# --------------------------------------------------------------------------------------------


def make_row(dataset: str, scores: dict[str, float], costs: dict[str, float]) -> BankRow:
    return BankRow.model_validate(
        {
            "query": f"q {dataset} {sorted(scores.items())}",
            "dataset": dataset,
            "records": scores,
            "usages": {
                m: {"prompt_tokens": 1, "completion_tokens": 1, "cost": c} for m, c in costs.items()
            },
            "raw_output": {m: "answer" for m in scores},
        }
    )


ROWS = [
    make_row("x", {"A": 1, "B": 0, "C": 1, "R": 1}, {"A": 0.3, "B": 0.1, "C": 0.2, "R": 1.0}),
    make_row("x", {"A": 0, "B": 0, "C": 0, "R": 0}, {"A": 0.3, "B": 0.1, "C": 0.2, "R": 1.0}),
    make_row("y", {"A": 1, "B": 1, "R": 1}, {"A": 0.3, "B": 0.1, "R": 1.0}),
]


def call(model: str, role: str, cost: float, ok: bool = True) -> ModelCall:
    return ModelCall(
        model=model,
        role=role,  # type: ignore[arg-type]
        ok=ok,
        answer="answer" if ok else None,
        error=None if ok else "boom",
        error_kind=None if ok else "server_error",
        cost_usd=cost,
    )


def decision(
    *,
    support: dict[str, float | None],
    probes: list[str],
    candidates: list[tuple[str, bool]],
    calls: list[ModelCall],
    source: str | None,
    mode: str = "aggregate",
) -> Decision:
    return Decision(
        query="q",
        support_size=10,
        neighbours=[],
        support_scores=support,
        aggregator_scores={},
        aggregators=[],
        probes=probes,
        candidates=[
            Candidate(
                model=m,
                routing_score=1.0 - i / 10,
                relative_score=1.0,
                probe=m in probes,
                answered=ok,
            )
            for i, (m, ok) in enumerate(candidates)
        ],
        switch_n=len(candidates) if mode == "aggregate" else 1,
        switch_threshold=0.8,
        mode=mode,  # type: ignore[arg-type]
        aggregation_method="vote" if mode == "aggregate" else "none",
        votable=True,
        answer_source=source,
        calls=calls,
        cost_usd=sum(c.cost_usd for c in calls),
    )


DECISIONS: list[Decision | None] = [
    # r1: P ties A and B (A first by pool order); the vote picks C, a non-probe candidate;
    # router-only takes B, a probe.
    decision(
        support={"A": 0.9, "B": 0.9, "C": 0.5},
        probes=["A", "B"],
        candidates=[("B", True), ("C", True), ("A", True)],
        calls=[call("A", "probe", 0.3), call("B", "probe", 0.1), call("C", "candidate", 0.2)],
        source="C",
    ),
    # r2: B has no P; candidate B failed, so router-only takes C (a probe).
    decision(
        support={"A": 0.2, "B": None, "C": 0.7},
        probes=["A", "C"],
        candidates=[("B", False), ("C", True), ("A", True)],
        calls=[call("A", "probe", 0.3), call("C", "probe", 0.2), call("B", "candidate", 0, False)],
        source="C",
        mode="route",
    ),
    # r3: router-only takes B, a non-probe candidate: honest cost = probe A + B's call.
    decision(
        support={"A": 0.4, "B": 0.6},
        probes=["A"],
        candidates=[("B", True), ("A", True)],
        calls=[call("A", "probe", 0.3), call("B", "candidate", 0.1)],
        source="A",
    ),
]


def scores_of(outcomes: list[Outcome]) -> list[float]:
    return [o.score for o in outcomes]


def costs_of(outcomes: list[Outcome]) -> list[float]:
    return [o.cost for o in outcomes]


# --------------------------------------------------------------------------------------------
# Per-method outcomes
# --------------------------------------------------------------------------------------------


def test_single_models_missing_record_scores_zero_and_costs_nothing() -> None:
    c = score_single(ROWS, "C")
    assert scores_of(c) == [1.0, 0.0, 0.0]
    assert costs_of(c) == [0.2, 0.2, 0.0]
    result = summarise(ROWS, c)
    assert result.per_dataset == {"x": 0.5, "y": 0.0}
    assert result.accuracy_macro == pytest.approx(0.25)
    assert result.accuracy_micro == pytest.approx(1 / 3)
    assert result.cost_usd == pytest.approx(0.4)


def test_single_model_never_recorded_scores_zero() -> None:
    outcomes = score_single(ROWS, "nobody")
    assert scores_of(outcomes) == [0.0, 0.0, 0.0]
    assert costs_of(outcomes) == [0.0, 0.0, 0.0]


def test_random_is_the_pool_mean_per_row() -> None:
    outcomes = score_random(ROWS, POOL)
    assert scores_of(outcomes) == pytest.approx([2 / 3, 0.0, 2 / 3])
    assert costs_of(outcomes) == pytest.approx([0.2, 0.2, 0.4 / 3])
    result = summarise(ROWS, outcomes)
    assert result.per_dataset == pytest.approx({"x": 1 / 3, "y": 2 / 3})
    assert result.accuracy_macro == pytest.approx(0.5)
    assert result.accuracy_micro == pytest.approx(4 / 9)
    assert result.cost_usd == pytest.approx(0.4 + 0.4 / 3)


def test_oracle_pays_the_cheapest_model_that_is_right() -> None:
    outcomes = score_oracle(ROWS, POOL)
    # r1: A (.3) and C (.2) are right -> C; r2: nobody -> 0 at the cheapest, B; r3: A, B -> B.
    assert [o.pick for o in outcomes] == ["C", "B", "B"]
    assert scores_of(outcomes) == [1.0, 0.0, 1.0]
    assert costs_of(outcomes) == pytest.approx([0.2, 0.1, 0.1])
    result = summarise(ROWS, outcomes)
    assert result.accuracy_macro == pytest.approx(0.75)
    assert result.accuracy_micro == pytest.approx(2 / 3)
    assert result.cost_usd == pytest.approx(0.4)


def test_oracle_with_fractional_scores_and_cost_ties() -> None:
    row = make_row("x", {"A": 0.5, "B": 0.7, "C": 0.7}, {"A": 0.0, "B": 0.2, "C": 0.2})
    (outcome,) = score_oracle([row], POOL)
    assert outcome == Outcome("B", 0.7, 0.2)


def test_oracle_on_a_row_no_pool_model_answered() -> None:
    row = make_row("x", {"R": 1}, {"R": 1.0})
    assert score_oracle([row], POOL) == [Outcome(None, 0.0, 0.0)]


def test_jisi_is_graded_by_the_answer_source_and_pays_every_call() -> None:
    outcomes = score_jisi(ROWS, DECISIONS)
    assert [o.pick for o in outcomes] == ["C", "C", "A"]
    assert scores_of(outcomes) == [1.0, 0.0, 1.0]
    assert costs_of(outcomes) == pytest.approx([0.6, 0.5, 0.4])
    result = summarise(ROWS, outcomes)
    assert result.accuracy_macro == pytest.approx(0.75)
    assert result.accuracy_micro == pytest.approx(2 / 3)
    assert result.cost_usd == pytest.approx(1.5)


def test_jisi_error_rows_score_zero() -> None:
    failed = decision(
        support={"A": 0.5},
        probes=["A"],
        candidates=[],
        calls=[call("A", "probe", 0.05, ok=False)],
        source=None,
        mode="error",
    )
    outcomes = score_jisi(ROWS[:2], [failed, None])
    assert outcomes == [Outcome(None, 0.0, 0.05), Outcome(None, 0.0, 0.0)]
    router, routed_only = score_router_only(ROWS[:2], [failed, None])
    # The failed probe's cost is still paid; a row whose run raised has no record of any.
    assert router == [Outcome(None, 0.0, 0.05), Outcome(None, 0.0, 0.0)]
    assert routed_only == [0.0, 0.0]
    assert score_query_knn(ROWS[:2], [failed, None], POOL) == [
        Outcome("A", 1.0, 0.3),
        Outcome(None, 0.0, 0.0),
    ]


def test_router_only_takes_the_top_answered_candidate_at_honest_cost() -> None:
    outcomes, routed_only = score_router_only(ROWS, DECISIONS)
    assert [o.pick for o in outcomes] == ["B", "C", "B"]
    assert scores_of(outcomes) == [0.0, 0.0, 1.0]
    # r1: probes A+B (B is a probe); r2: probes A+C; r3: probe A + candidate B.
    assert costs_of(outcomes) == pytest.approx([0.4, 0.5, 0.4])
    assert routed_only == pytest.approx([0.1, 0.2, 0.1])
    assert router_only_cost(DECISIONS[2], "B") == pytest.approx(0.4)  # type: ignore[arg-type]
    result = summarise(ROWS, outcomes)
    assert result.accuracy_macro == pytest.approx(0.5)
    assert result.accuracy_micro == pytest.approx(1 / 3)
    assert result.cost_usd == pytest.approx(1.3)


def test_query_knn_takes_argmax_of_p_with_ties_by_pool_order() -> None:
    outcomes = score_query_knn(ROWS, DECISIONS, POOL)
    assert [o.pick for o in outcomes] == ["A", "C", "B"]
    assert scores_of(outcomes) == [1.0, 0.0, 1.0]
    assert costs_of(outcomes) == pytest.approx([0.3, 0.2, 0.1])
    # Another pool order breaks the r1 tie the other way.
    assert score_query_knn(ROWS, DECISIONS, ["B", "A", "C"])[0] == Outcome("B", 0.0, 0.1)


def test_best_on_bank_ties_by_pool_order() -> None:
    ability = {"A": 0.5, "B": 0.7, "C": 0.7, "R": 0.99}
    assert best_on_bank(ability, POOL) == "B"
    assert best_on_bank(ability, ["C", "B"]) == "C"
    with pytest.raises(ValueError, match="no pool model"):
        best_on_bank({"A": float("nan")}, ["A"])


def test_summarise_rejects_misaligned_outcomes() -> None:
    with pytest.raises(ValueError, match="2 outcomes for 3 rows"):
        summarise(ROWS, [Outcome(None, 0, 0)] * 2)


# --------------------------------------------------------------------------------------------
# Every method together, and the report
# --------------------------------------------------------------------------------------------

EXPECTED = {
    # name: (macro, micro, cost)
    "jisi": (0.75, 2 / 3, 1.5),
    "jisi-router-only": (0.5, 1 / 3, 1.3),
    "query-knn": (0.75, 2 / 3, 0.6),
    "best-single-on-bank": (0.5, 1 / 3, 0.3),
    "oracle": (0.75, 2 / 3, 0.4),
    "random": (0.5, 4 / 9, 0.4 + 0.4 / 3),
    "single:A": (0.75, 2 / 3, 0.9),
    "single:B": (0.5, 1 / 3, 0.3),
    "single:C": (0.25, 1 / 3, 0.4),
    "reference:R": (0.75, 2 / 3, 3.0),
}


@pytest.fixture
def hand_report() -> EvalReport:
    ability = {"A": 0.5, "B": 0.7, "C": 0.7}
    outcomes = score_methods(ROWS, DECISIONS, POOL, references=["R"], bank_ability=ability)
    methods = summarise_methods(ROWS, DECISIONS, outcomes)
    return EvalReport(
        methods=methods,
        jisi=run_statistics(DECISIONS),
        run={"data": "hand.jsonl", "split": "test", "rows": 3, "pool": POOL, "context": {}},
    )


def test_every_method_hand_computed(hand_report: EvalReport) -> None:
    assert list(hand_report.methods) == list(EXPECTED)
    for name, (macro, micro, cost) in EXPECTED.items():
        result = hand_report.methods[name]
        assert result.accuracy_macro == pytest.approx(macro), name
        assert result.accuracy_micro == pytest.approx(micro), name
        assert result.cost_usd == pytest.approx(cost), name
    router = hand_report.methods["jisi-router-only"].extra
    assert router["cost_usd_routed_only"] == pytest.approx(0.4)
    assert router["cost_usd_routed_only_note"] == ROUTED_ONLY_NOTE
    assert hand_report.methods["best-single-on-bank"].extra["model"] == "B"
    assert hand_report.methods["jisi"].extra["picks"] == {"C": 2, "A": 1}


def test_run_statistics(hand_report: EvalReport) -> None:
    stats = hand_report.jisi
    assert stats["rows"] == 3
    assert stats["aggregated_fraction"] == pytest.approx(2 / 3)
    assert stats["vote_fraction"] == pytest.approx(2 / 3)
    assert stats["routed_fraction"] == pytest.approx(1 / 3)
    assert stats["mean_calls"] == pytest.approx(8 / 3)
    assert stats["failures"] == 1
    assert stats["failures_by_model"] == {"B": 1}
    assert stats["error_rows"] == 0
    assert stats["extra_candidate_call_fraction"] == pytest.approx(1.0)
    assert stats["no_probe_fraction"] == 0.0
    assert run_statistics([None, DECISIONS[0]])["error_rows"] == 1


def test_run_statistics_count_alike_fallbacks_together() -> None:
    def skipped(margin: str) -> Decision:
        alone = decision(
            support={"A": 0.9, "B": 0.1},
            probes=[],
            candidates=[("A", True)],
            calls=[call("A", "candidate", 0.3)],
            source="A",
            mode="route",
        )
        reason = f"the top model leads the next by {margin} >= probe_margin 0.3: routed to it"
        return alone.model_copy(update={"fallback": reason})

    stats = run_statistics([skipped("0.3172"), skipped("0.41"), DECISIONS[0]])
    assert stats["fallbacks"] == {
        "the top model leads the next by # >= probe_margin #: routed to it": 2
    }
    # a leader asked alone is not an extra candidate: no probe came before it
    assert stats["extra_candidate_call_fraction"] == pytest.approx(1 / 3)
    assert stats["no_probe_fraction"] == pytest.approx(2 / 3)
    assert fallback_kind("cost weight 0.4, margin 1e-05, -2") == "cost weight #, margin #, #"


def test_json_report_structure(hand_report: EvalReport, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json(hand_report, path)
    data = json.loads(path.read_text())
    assert set(data) == {"methods", "jisi", "run"}
    jisi = data["methods"]["jisi"]
    assert {"accuracy_macro", "accuracy_micro", "cost_usd", "per_dataset"} <= set(jisi)
    assert jisi["per_dataset"] == {"x": 0.5, "y": 1.0}
    assert data["jisi"]["failures"] == 1


def test_table_and_markdown_show_percentages(hand_report: EvalReport) -> None:
    table = format_table(hand_report).splitlines()
    assert table[0].split() == [
        "method",
        "macro",
        "%",
        "micro",
        "%",
        "x",
        "%",
        "y",
        "%",
        "cost",
        "USD",
    ]
    jisi = next(line for line in table if line.startswith("jisi "))
    assert jisi.split() == ["jisi", "75.00", "66.67", "50.00", "100.00", "1.5000"]
    markdown = render_markdown(hand_report)
    assert "| single:C | 25.00 | 33.33 | 50.00 | 0.00 | 0.4000 |" in markdown
    assert "0.4000 USD with the reference code's way" in markdown
    assert f"Cost: the total over the {hand_report.run['rows']} rows." in markdown


def test_plot_is_written(hand_report: EvalReport, tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    write_plot(hand_report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Configuration checks
# --------------------------------------------------------------------------------------------


def test_parse_overrides() -> None:
    assert parse_overrides(
        ["top_k=2", " switch_threshold = 0.9 ", "probe_margin=null", "aggregation=vote"]
    ) == {"top_k": 2, "switch_threshold": 0.9, "probe_margin": None, "aggregation": "vote"}
    with pytest.raises(EvalConfigError, match="KNOB=VALUE"):
        parse_overrides(["top_k"])


def test_eval_context_votes_and_validates_overrides() -> None:
    context = eval_context({"top_k": "2", "show_confidence": "true"})
    assert (context.aggregation, context.top_k, context.show_confidence) == ("vote", 2, True)
    with pytest.raises(EvalConfigError, match="cannot be evaluated from recorded rows"):
        eval_context({"aggregation": "llm"})
    assert eval_context(parse_overrides(["probe_margin=null"])).probe_margin is None
    with pytest.raises(EvalConfigError, match="cannot be evaluated from recorded rows"):
        eval_context({"aggregation": "vote_or_llm"})
    with pytest.raises(EvalConfigError, match="unknown knob 'topk'"):
        eval_context({"topk": "2"})
    with pytest.raises(EvalConfigError, match="switch_threshold"):
        eval_context({"switch_threshold": "1.5"})
    with pytest.raises(EvalConfigError, match="--set bank is not allowed"):
        eval_context({"bank": "/tmp/x"})


def test_resolve_pool_and_references() -> None:
    bank: Any = SimpleNamespace(models=["A", "B", "C"])
    assert resolve_pool(bank, None) == ["A", "B", "C"]
    assert resolve_pool(bank, ["C", "A", "C"]) == ["C", "A"]
    with pytest.raises(EvalConfigError, match="pool model not in the bank: Z"):
        resolve_pool(bank, ["A", "Z"])
    assert check_references(ROWS, ["R"]) == ["R"]
    with pytest.raises(EvalConfigError, match="no record in the rows: Q"):
        check_references(ROWS, ["Q"])


def test_cli_refuses_llm_aggregation(tmp_path: Path) -> None:
    from jisi_graph.cli import app

    result = CliRunner().invoke(
        app,
        ["eval", "--data", "rows.jsonl", "--bank", str(tmp_path), "--set", "aggregation=llm"],
    )
    assert result.exit_code == 2
    assert "aggregation=llm cannot be evaluated from recorded rows" in result.output


# --------------------------------------------------------------------------------------------
# End to end on a tiny real bank
# --------------------------------------------------------------------------------------------

TINY_MODELS = ["Mistral-Large-2", "gemma-2-9b-it", "Qwen2-72B-Instruct"]


@pytest.fixture(scope="session")
def embedder() -> Any:
    from jisi_graph.embedding import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def tiny_bank(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    if not ZEROEVAL.exists():
        pytest.skip(f"shared data not found at {ZEROEVAL}")
    from jisi_graph.bank.build import build_bank, write_bank
    from jisi_graph.bank.loaders import load_rows
    from jisi_graph.bank.manifest import SourceRecord

    rows = load_rows(ZEROEVAL, split="train", models=TINY_MODELS, limit=40)
    source = SourceRecord(path=str(ZEROEVAL), sha256=None, split="train", limit=40)
    bank = build_bank(rows, embedder, source=source, models=TINY_MODELS)
    return write_bank(bank, tmp_path_factory.mktemp("banks") / "tiny")


@pytest.mark.slow
def test_evaluate_end_to_end(tiny_bank: Path, embedder: Any, tmp_path: Path) -> None:
    from jisi_graph.bank.loaders import load_rows
    from jisi_graph.evaluate import evaluate

    reference = "gpt-4o-2024-08-06"
    report = evaluate(
        ZEROEVAL,
        tiny_bank,
        limit=10,
        references=[reference],
        concurrency=2,
        embedder=embedder,
        progress=False,
    )
    rows = load_rows(ZEROEVAL, split="test", limit=10)
    assert report.run["rows"] == 10
    assert report.run["pool"] == TINY_MODELS
    assert report.run["context"]["aggregation"] == "vote"
    assert report.jisi["error_rows"] == 0
    assert report.jisi["failures"] == 0
    assert set(report.methods) == {
        "jisi",
        "jisi-router-only",
        "query-knn",
        "best-single-on-bank",
        "oracle",
        "random",
        *(f"single:{m}" for m in TINY_MODELS),
        f"reference:{reference}",
        "avengers-pro",
    }
    assert report.methods["avengers-pro"].extra["picks"]
    assert set(report.methods["avengers-pro"].extra["picks"]) <= set(TINY_MODELS)
    for model in [*TINY_MODELS, reference]:
        name = f"single:{model}" if model in TINY_MODELS else f"reference:{model}"
        result = report.methods[name]
        assert result.accuracy_micro == pytest.approx(sum(r.records[model] for r in rows) / 10)
        assert result.cost_usd == pytest.approx(sum(r.usages[model].cost or 0 for r in rows))
    for row, record in zip(rows, report.rows, strict=True):
        assert record.decision is not None
        source = record.decision["answer_source"]
        assert source in TINY_MODELS
        assert record.methods["jisi"]["score"] == row.records[source]
        assert record.methods["jisi"]["cost"] == pytest.approx(record.decision["cost_usd"])
    for name in ("jisi", "jisi-router-only", "query-knn", "oracle"):
        result = report.methods[name]
        assert 0.0 <= result.accuracy_macro <= 1.0
        assert result.cost_usd > 0
    assert report.methods["oracle"].accuracy_micro >= max(
        report.methods[f"single:{m}"].accuracy_micro for m in TINY_MODELS
    )

    write_json(report, tmp_path / "r.json")
    write_rows(report, tmp_path / "rows.jsonl")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["run"]["rows"] == 10
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 10
    assert set(json.loads(lines[0])) == {"id", "dataset", "decision", "error", "methods"}


@pytest.mark.slow
def test_cli_names_an_unknown_pool_model(tiny_bank: Path) -> None:
    from jisi_graph.cli import app

    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--data",
            str(ZEROEVAL),
            "--bank",
            str(tiny_bank),
            "--pool",
            "gemma-2-9b-it,Nope-7B",
        ],
    )
    assert result.exit_code == 2
    assert "pool model not in the bank: Nope-7B" in result.output
    assert "Mistral-Large-2" in result.output
