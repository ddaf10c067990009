"""The cost knob, adaptive probing, and calibration: pure functions by hand, the graph's use of
each knob, `jisi calibrate` on small synthetic banks, its agreement with the graph, error paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import basis, fake_embedder, make_row, synthetic_source
from typer.testing import CliRunner

from jisi_graph.bank.build import build_bank, write_bank
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.calibrate import (
    CalibrateError,
    Knobs,
    bank_arrays,
    build_direct,
    build_tables,
    calibrate,
    check_targets,
    outcome,
    pareto_frontier,
    prepare,
)
from jisi_graph.calibration import (
    CALIBRATION_NAME,
    Calibration,
    CalibrationError,
    apply_calibration,
    load_calibration,
    manifest_checksum,
    write_calibration,
)
from jisi_graph.cli import app
from jisi_graph.context import DEFAULTS, JisiContext
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.replay import replay_pool
from jisi_graph.report import render_markdown
from jisi_graph.resources import Resources
from jisi_graph.routing import clear_leader, cost_aware_scores, min_max_normalise
from jisi_graph.state import Decision

# ------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------


def test_min_max_normalise_over_the_eligible_models() -> None:
    values = np.array([0.2, 0.6, np.nan, 1.0])
    assert min_max_normalise(values).tolist()[:2] == pytest.approx([0.0, 0.5])
    assert np.isnan(min_max_normalise(values)[2])
    # bounds from the eligible models only; the others use the same bounds
    eligible = np.array([True, True, True, False])
    assert min_max_normalise(values, eligible)[[0, 1, 3]].tolist() == pytest.approx([0, 1, 2])
    assert min_max_normalise(np.array([0.3, 0.3])).tolist() == [0.0, 0.0]


def test_cost_aware_scores_by_hand() -> None:
    quality = np.array([1.0, 0.9, 0.5, 0.1])
    cost = np.array([1.0, 0.1, 0.01, 0.001])
    # w = 0: the quality scores themselves, not normalised (the paper's switch stays exact)
    assert cost_aware_scores(quality, cost, 0.0).tolist() == quality.tolist()
    # w = 0.5: 0.5 * (q - 0.1) / 0.9 + 0.5 * (1 - (c - 0.001) / 0.999)
    expected = [
        0.5 * (q - 0.1) / 0.9 + 0.5 * (1 - (c - 0.001) / 0.999)
        for q, c in zip(quality, cost, strict=True)
    ]
    assert cost_aware_scores(quality, cost, 0.5).tolist() == pytest.approx(expected)
    assert cost_aware_scores(quality, cost, 0.5).tolist() == pytest.approx(
        [0.5, 0.894895, 0.717718, 0.5], abs=1e-6
    )
    # w = 1: cheapest first, quality ignored
    assert cost_aware_scores(quality, cost, 1.0).tolist() == pytest.approx(
        [0.0, 1 - 0.099 / 0.999, 1 - 0.009 / 0.999, 1.0]
    )


def test_cost_aware_scores_nan_quality_stays_nan_unknown_cost_is_cheapest() -> None:
    scores = cost_aware_scores(np.array([1.0, np.nan, 0.0]), np.array([np.nan, 5.0, 2.0]), 0.5)
    assert np.isnan(scores[1])
    assert scores[0] == pytest.approx(0.5 * 1 + 0.5 * 1)  # cost unknown: counts as cheapest
    assert scores[2] == pytest.approx(0.5 * 0 + 0.5 * 1)  # the only known cost: normalised to 0
    with pytest.raises(ValueError, match="cost weight"):
        cost_aware_scores(np.ones(2), np.ones(2), 1.5)


def test_clear_leader() -> None:
    p = np.array([0.9, 0.6, 0.85])
    assert clear_leader(p, margin=None) is None
    assert clear_leader(p, margin=0.0) == 0
    assert clear_leader(p, margin=0.05) == 0
    assert clear_leader(p, margin=0.06) is None
    # the runner-up among eligible models only
    assert clear_leader(p, np.array([True, True, False]), margin=0.3) == 0
    assert clear_leader(np.array([np.nan, 0.2]), margin=0.9) == 1
    with pytest.raises(ValueError, match="margin"):
        clear_leader(p, margin=-0.1)


def test_pareto_frontier_keeps_points_no_other_beats() -> None:
    def point(acc: float, cost: float) -> Any:
        from jisi_graph.calibrate import Point

        return Point(
            knobs=Knobs(0.5, 0.8, None, 3, "mixed", 0.0),
            accuracy=acc,
            cost=cost,
            direct_fraction=0,
            mean_calls=1,
        )

    frontier = pareto_frontier([point(0.5, 1), point(0.4, 2), point(0.7, 3), point(0.6, 0.5)])
    assert [(p.accuracy, p.cost) for p in frontier] == [(0.6, 0.5), (0.7, 3)]


def test_targets_are_checked() -> None:
    with pytest.raises(CalibrateError, match="not both"):
        check_targets(0.01, 0.8)
    with pytest.raises(CalibrateError, match="positive"):
        check_targets(-1.0, None)
    with pytest.raises(CalibrateError, match=r"\(0, 1\]"):
        check_targets(None, 80.0)
    check_targets(0.01, None)
    check_targets(None, 1.0)


# ------------------------------------------------------------------------------------------
# A clustered bank: query-kNN is perfect, no single model is
#
# rows 0-9 (dataset x) lie near axis 0, rows 10-19 (dataset y) near axis 1.
# pricey is right on y and on rows 0-6 (cost 0.01), cheap on x only (cost 0.001), bad never
# (0.0001). CV: the best single model on every fold's training rows is pricey, macro
# (0.7 + 1) / 2 = 85% for 0.01 per query; query-kNN 100% for (10 x 0.001 + 10 x 0.01) / 20 =
# 0.0055 per query.
# ------------------------------------------------------------------------------------------

CLUSTER_MODELS = ("pricey", "cheap", "bad")
CLUSTER_COSTS = {"pricey": 0.01, "cheap": 0.001, "bad": 0.0001}
DIM = 8


def cluster_rows() -> tuple[list[BankRow], dict[str, list[float]]]:
    rng = np.random.default_rng(7)
    rows, vectors = [], {}
    for j in range(20):
        dataset = "x" if j < 10 else "y"
        axis = 0 if j < 10 else 1
        vector = np.array(basis(axis, DIM)) + 0.05 * rng.standard_normal(DIM)
        vector /= np.linalg.norm(vector)
        query = f"cluster question {j}"
        vectors[query] = vector.tolist()
        scores = {
            "pricey": float(dataset == "y" or j < 7),
            "cheap": float(dataset == "x"),
            "bad": 0.0,
        }
        answers = {m: f"The answer is {j * 10 + k}" for k, m in enumerate(CLUSTER_MODELS)}
        for k, model in enumerate(CLUSTER_MODELS):
            vectors[answers[model]] = basis(2 + k, DIM)
        rows.append(
            make_row(
                query,
                scores,
                dataset=dataset,
                index=j,
                answers=answers,
                costs=CLUSTER_COSTS,
                completion_tokens={"pricey": 40, "cheap": 20, "bad": 5},
            )
        )
    return rows, vectors


def write_rows(rows: list[BankRow], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row.model_dump(mode="json", exclude_none=True)) + "\n")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Embedder, list[BankRow], Path]:
    """A written clustered bank (directory), its embedder, its rows and their file."""
    rows, vectors = cluster_rows()
    embedder = fake_embedder(vectors, default=basis(DIM - 1, DIM))
    base = tmp_path_factory.mktemp("cluster")
    data = write_rows(rows, base / "rows.jsonl")
    bank = build_bank(
        rows,
        embedder,
        source=synthetic_source(),
        models=list(CLUSTER_MODELS),
        votable={"x": True, "y": True},
    )
    directory = write_bank(bank, base / "bank")
    return directory, embedder, rows, data


def test_calibrate_chooses_query_knn_on_the_clustered_bank(
    cluster: tuple[Path, Embedder, list[BankRow], Path],
) -> None:
    directory, _, _, data = cluster
    result = calibrate(directory, folds=4, data=data)
    assert result.baselines["best-single-on-bank"]["model"] == "pricey"
    assert result.baselines["best-single-on-bank"]["accuracy_macro"] == pytest.approx(0.85)
    assert result.baselines["best-single-on-bank"]["cost_per_query"] == pytest.approx(0.01)
    assert result.baselines["query-knn"]["accuracy_macro"] == pytest.approx(1.0)
    assert result.baselines["query-knn"]["cost_per_query"] == pytest.approx(0.0055)
    assert result.baselines["single:bad"]["accuracy_macro"] == 0.0
    # every probe costs: the cheapest perfect point routes every row alone, as query-kNN does
    assert result.chosen["accuracy_macro"] == pytest.approx(1.0)
    assert result.chosen["cost_per_query"] == pytest.approx(0.0055)
    assert result.chosen["meets_floor"] and result.chosen["within_cap"]
    assert result.knobs == {
        "query_coef": 0.5,
        "switch_threshold": 0.8,
        "probe_margin": 0.0,
        "top_k": 3,
        "candidate_source": "mixed",
        "cost_weight": 0.0,
        "support_k": 50,
        "sample_n": 3,
        "stop_on_agreement": False,
    }
    # the paper's configuration probes the top three models: all three costs on every row
    assert result.baselines["paper-config"]["cost_per_query"] == pytest.approx(0.0111)
    assert result.manifest_sha256 == manifest_checksum(directory)
    # stored beside the bank without breaking the bank's own checksums
    assert (directory / CALIBRATION_NAME).is_file()
    Bank.load(directory, verify=True)
    assert load_calibration(directory) == result


def test_target_budget_below_every_perfect_point(
    cluster: tuple[Path, Embedder, list[BankRow], Path],
) -> None:
    directory, _, _, data = cluster
    # 0.002 per query: only routing by cost reaches it; the accuracy floor cannot be met
    result = calibrate(directory, folds=4, data=data, target_budget=0.002, write=False)
    assert result.chosen["cost_per_query"] <= 0.002 + 1e-12
    assert not result.chosen["meets_floor"]
    assert any("most accurate point within the cap" in note for note in result.notes)
    # the best it can do within 0.002: cheap on x (right), cheap on y (wrong) -> 50%
    assert result.chosen["accuracy_macro"] == pytest.approx(0.5)


def test_target_accuracy_takes_the_cheapest_point_reaching_it(
    cluster: tuple[Path, Embedder, list[BankRow], Path],
) -> None:
    directory, _, _, data = cluster
    result = calibrate(directory, folds=4, data=data, target_accuracy=1.0, write=False)
    assert result.chosen["accuracy_macro"] == pytest.approx(1.0)
    assert result.chosen["cost_per_query"] == pytest.approx(0.0055)


def test_calibrate_without_the_source_file_names_it(
    cluster: tuple[Path, Embedder, list[BankRow], Path],
) -> None:
    directory, *_ = cluster
    with pytest.raises(CalibrateError, match="--data"):
        calibrate(directory, folds=4, write=False)  # source "synthetic" is not a file


# ------------------------------------------------------------------------------------------
# The graph uses the calibration unless told otherwise
# ------------------------------------------------------------------------------------------

CALIBRATED = {
    "query_coef": 0.5,
    "switch_threshold": 0.8,
    "probe_margin": 0.2,
    "top_k": 3,
    "candidate_source": "mixed",
    "cost_weight": 0.0,
    "support_k": 50,
}


def calibrated_bank(
    cluster: tuple[Path, Embedder, list[BankRow], Path], tmp_path: Path
) -> tuple[Resources, list[BankRow]]:
    directory, embedder, rows, _ = cluster
    bank = Bank.load(directory)
    write_calibration(
        directory,
        Calibration(
            manifest_sha256=manifest_checksum(directory),
            pool=list(CLUSTER_MODELS),
            knobs=CALIBRATED,
        ),
    )
    resources = Resources(bank, embedder, replay_pool(rows, list(CLUSTER_MODELS)))
    return resources, rows


def ask(resources: Resources, query: str, **context: Any) -> Decision:
    graph = build_graph(resources)
    out = graph.invoke({"query": query}, context={"aggregation": "vote", **context})
    return Decision.model_validate(out["decision"])


def test_graph_uses_the_calibration(
    cluster: tuple[Path, Embedder, list[BankRow], Path], tmp_path: Path
) -> None:
    resources, rows = calibrated_bank(cluster, tmp_path)
    try:
        decision = ask(resources, rows[3].query)  # an x row: cheap leads P by far
        assert decision.calibrated_knobs == CALIBRATED
        assert decision.knobs["probe_margin"] == 0.2
        assert [(c.model, c.role) for c in decision.calls] == [("cheap", "candidate")]
        assert decision.probes == []
        assert decision.probing_skipped is not None
        assert "probe_margin 0.2" in decision.probing_skipped
        assert decision.answer_source == "cheap"
        assert decision.cost_usd == pytest.approx(0.001)
        # an override wins over the calibration
        explicit = ask(resources, rows[3].query, probe_margin=None)
        assert "probe_margin" not in explicit.calibrated_knobs
        assert sorted(c.model for c in explicit.calls if c.role == "probe") == sorted(
            CLUSTER_MODELS
        )
        assert explicit.probing_skipped is None
        # calibrated=False: the paper's configuration
        paper = ask(resources, rows[3].query, calibrated=False)
        assert paper.calibrated_knobs == {}
        assert len([c for c in paper.calls if c.role == "probe"]) == 3
        # applied only to the pool it was made for
        context, taken, why = apply_calibration(
            JisiContext(), resources.calibration, ["pricey", "cheap"]
        )
        assert taken == {} and context == JisiContext() and "another pool" in (why or "")
    finally:
        (cluster[0] / CALIBRATION_NAME).unlink()


def test_corrupt_or_stale_calibration_is_refused(
    cluster: tuple[Path, Embedder, list[BankRow], Path], tmp_path: Path
) -> None:
    directory, embedder, rows, _ = cluster
    path = directory / CALIBRATION_NAME
    try:
        path.write_text("{not json")
        with pytest.raises(CalibrationError, match="not valid JSON"):
            Resources(Bank.load(directory), embedder, replay_pool(rows, list(CLUSTER_MODELS)))
        path.write_text(json.dumps({"pool": []}))
        with pytest.raises(CalibrationError, match="not a calibration file"):
            load_calibration(directory)
        stale = Calibration(manifest_sha256="0" * 64, pool=["cheap"], knobs={"top_k": 2})
        write_calibration(directory, stale)
        with pytest.raises(CalibrationError, match="another build"):
            load_calibration(directory)
        bad = stale.model_copy(
            update={"manifest_sha256": manifest_checksum(directory), "knobs": {"top_k": 0}}
        )
        write_calibration(directory, bad)
        with pytest.raises(CalibrationError, match="invalid knob value"):
            load_calibration(directory)
        other = bad.model_copy(update={"knobs": {"timeout_s": 3}})
        write_calibration(directory, other)
        with pytest.raises(CalibrationError, match="not calibrated: timeout_s"):
            load_calibration(directory)
        # the bank itself still loads and verifies
        Bank.load(directory, verify=True)
    finally:
        path.unlink()


def test_cli_calibrate_refuses_a_bad_target(
    cluster: tuple[Path, Embedder, list[BankRow], Path],
) -> None:
    directory, _, _, data = cluster
    result = CliRunner().invoke(
        app, ["calibrate", "--bank", str(directory), "--target-accuracy", "80", "--dry-run"]
    )
    assert result.exit_code == 2
    assert "(0, 1]" in result.output
    result = CliRunner().invoke(
        app,
        ["calibrate", "--bank", str(directory), "--data", str(data), "--folds", "1"],
    )
    assert result.exit_code == 2
    assert "--folds must be at least 2" in result.output
    assert not (directory / CALIBRATION_NAME).exists()


# ------------------------------------------------------------------------------------------
# The replay of `jisi calibrate` agrees with the graph
#
# Twelve rows with random query vectors, random scores, costs and lengths, and answer vectors
# on basis axes (exact in the bank's float16). For a held-out row, the graph runs on a bank of
# the other eleven with replayed answers; calibration's replay holds the same row out.
# ------------------------------------------------------------------------------------------

AGREE_MODELS = ("A", "B", "C", "D")
AGREE_DIM = 16


def agreement_rows() -> tuple[list[BankRow], dict[str, list[float]]]:
    rng = np.random.default_rng(3)
    rows, vectors = [], {}
    for j in range(12):
        query = f"agreement question {j}"
        vector = rng.standard_normal(AGREE_DIM).astype(np.float32)
        vectors[query] = (vector / np.linalg.norm(vector)).tolist()
        answers, scores, costs, tokens = {}, {}, {}, {}
        for model in AGREE_MODELS:
            value = int(rng.integers(0, 3))  # answers often agree: votes happen
            answers[model] = f"row {j} model {model}: the answer is {value}"
            vectors[answers[model]] = basis(int(rng.integers(0, AGREE_DIM)), AGREE_DIM)
            scores[model] = float(value == 1)
            costs[model] = round(float(rng.uniform(0.0001, 0.01)), 6)
            tokens[model] = int(rng.integers(5, 400))
        rows.append(
            make_row(
                query,
                scores,
                dataset="math" if j % 3 else "more-math",
                index=j,
                answers=answers,
                costs=costs,
                completion_tokens=tokens,
            )
        )
    return rows, vectors


KNOB_SETS = [
    {},  # the paper's configuration
    {"candidate_source": "support", "switch_threshold": 0.05, "top_k": 3},
    {"cost_weight": 0.5, "query_coef": 0.0, "top_k": 2, "switch_threshold": 0.5},
    {"probe_margin": 0.1, "query_coef": 1.0, "cost_weight": 0.2},
    {"probe_margin": 0.0},
    {"stop_on_agreement": True, "sample_n": 2, "top_k": 4, "switch_threshold": 0.05},
    {"stop_on_agreement": True, "candidate_source": "support", "top_k": 4, "cost_weight": 0.3},
]


def test_calibration_replay_agrees_with_the_graph(tmp_path: Path) -> None:
    rows, vectors = agreement_rows()
    embedder = fake_embedder(vectors, default=basis(0, AGREE_DIM))
    votable = {"math": True, "more-math": True}
    full = build_bank(
        rows, embedder, source=synthetic_source(), models=list(AGREE_MODELS), votable=votable
    )
    arrays = bank_arrays(full, data=write_rows(rows, tmp_path / "rows.jsonl"))
    compared, paths, agreed = 0, set(), 0
    for x in (0, 4, 7, 11):
        others = [row for j, row in enumerate(rows) if j != x]
        bank = build_bank(
            others, embedder, source=synthetic_source(), models=list(AGREE_MODELS), votable=votable
        )
        resources = Resources(bank, embedder, replay_pool([rows[x]], list(AGREE_MODELS)))
        fold = np.ones(len(rows), dtype=np.int64)
        fold[x] = 0
        prep = prepare(arrays, fold)
        for knobs in KNOB_SETS:
            decision = ask(resources, rows[x].query, calibrated=False, **knobs)
            context = JisiContext(**knobs)
            direct = build_direct(arrays, prep, context.cost_weight)
            tables = build_tables(
                arrays,
                prep,
                context.cost_weight,
                context.candidate_source,
                [context.query_coef],
                5,
                context,
            )
            table = next(iter(tables.values()))
            score, cost, calls, routed = outcome(
                table,
                direct,
                prep.votable,
                context.top_k,
                context.switch_threshold,
                context.probe_margin,
            )
            graded = rows[x].records.get(decision.answer_source or "", 0.0)
            where = f"row {x}, knobs {knobs}"
            assert decision.support_scores == pytest.approx(
                dict(zip(AGREE_MODELS, prep.support_scores[x].tolist(), strict=True)), abs=1e-5
            ), where
            assert score[x] == graded, where
            assert cost[x] == pytest.approx(decision.cost_usd, abs=1e-9), where
            assert calls[x] == len(decision.calls), where
            assert bool(routed[x]) == (decision.probing_skipped is not None), where
            compared += 1
            paths.add((decision.mode, decision.aggregation_method, bool(routed[x])))
            agreed += bool(table.agreed[x]) and context.stop_on_agreement
    assert compared == 28
    # votes, routes after probes, and routes without probes were all compared
    assert paths == {
        ("aggregate", "vote", False),
        ("route", "none", False),
        ("route", "none", True),
    }
    assert DEFAULTS.probe_margin is None and DEFAULTS.cost_weight == 0.0


def test_eval_on_a_calibrated_bank_keeps_the_paper_configuration_row(
    cluster: tuple[Path, Embedder, list[BankRow], Path], tmp_path: Path
) -> None:
    from jisi_graph.evaluate import evaluate

    directory, embedder, rows, data = cluster
    split = rows[0].split
    calibrated_bank(cluster, tmp_path)
    try:
        report = evaluate(data, directory, split=split, embedder=embedder, progress=False)
        paper = evaluate(
            data,
            directory,
            split=split,
            embedder=embedder,
            progress=False,
            overrides={"calibrated": "false"},
        )
    finally:
        (directory / CALIBRATION_NAME).unlink()
    names = list(report.methods)
    assert names[:4] == ["jisi", "jisi-router-only", "jisi-paper", "jisi-paper-router-only"]
    assert report.run["calibrated_knobs"] == CALIBRATED
    # the paper row is the uncalibrated run, to the cent and the point
    assert "jisi-paper" not in paper.methods and paper.run["calibrated_knobs"] == {}
    pairs = (
        ("jisi-paper", "jisi"),
        ("jisi-paper-router-only", "jisi-router-only"),
        ("query-knn", "query-knn"),  # plain query-kNN: the uncalibrated support set
    )
    for ours, theirs in pairs:
        assert report.methods[ours].accuracy_macro == paper.methods[theirs].accuracy_macro
        assert report.methods[ours].cost_usd == pytest.approx(paper.methods[theirs].cost_usd)
    statistics = report.jisi["paper_config"]
    assert statistics["mean_calls"] == paper.jisi["mean_calls"]
    assert statistics["context"]["calibrated"] is False
    # the calibration (probe_margin 0.2 routes the x rows to cheap alone) pays less
    assert report.methods["jisi"].cost_usd < report.methods["jisi-paper"].cost_usd
    assert "jisi-paper is the same graph" in render_markdown(report)


def test_sweep_runs_a_setting_once_on_a_calibrated_bank(
    cluster: tuple[Path, Embedder, list[BankRow], Path], tmp_path: Path
) -> None:
    from jisi_graph.sweep import sweep
    from jisi_graph.sweep_report import curve_rows

    directory, embedder, rows, data = cluster
    calibrated_bank(cluster, tmp_path)
    grid = [
        {"cost_weight": 0.5},
        {"cost_weight": 0.5, "probe_margin": 0.2},  # the calibration's margin: the same run
        {"probe_margin": 0.2},  # every knob as calibrated: the base run
        {"cost_weight": 0.5, "probe_margin": 0.0},  # another margin: a run of its own
    ]
    try:
        report = sweep(
            data, directory, split=rows[0].split, embedder=embedder, grid=grid, alphas=[1.0],
            progress=False,
        )  # fmt: skip
    finally:
        (directory / CALIBRATION_NAME).unlink()
    first, same, base, other = report.curves["jisi"]
    assert same.extra["same_run_as"] == {"cost_weight": 0.5}
    assert (same.cost, same.accuracy) == (first.cost, first.accuracy)
    assert "wall_seconds" in first.extra and "same_run_as" not in first.extra
    assert "wall_seconds" not in base.extra  # taken from the base run, not run again
    assert base.accuracy == report.base.methods["jisi"].accuracy_macro
    assert base.cost == pytest.approx(report.base.methods["jisi"].cost_usd)
    assert "wall_seconds" in other.extra and "same_run_as" not in other.extra
    # probe_margin 0 routes every row alone: no probes, one call per row
    assert other.extra["mean_calls"] == 1.0
    assert curve_rows(report)[1][1] == (
        "cost_weight=0.5, probe_margin=0.2 (same run as cost_weight=0.5)"
    )
