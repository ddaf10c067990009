"""The frontier math on hand-made points, the sweep's analysis and forms, and `jisi eval --sweep`.

Hand-made frontier (cost, macro accuracy): (1, .5), (2, .4), (3, .7), (5, .6).
Its staircase f: 0 below 1, .5 on [1, 3), .7 from 3 on; (2, .4) and (5, .6) are below it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from jisi_graph.evaluate import EvalConfigError
from jisi_graph.frontier import Point, area_under, best_within, cheapest_match, envelope
from jisi_graph.report import EvalReport
from jisi_graph.scoring import MethodResult
from jisi_graph.sweep import (
    DEFAULT_ALPHAS,
    DEFAULT_COST_WEIGHTS,
    SweepReport,
    default_jisi_grid,
    parse_alphas,
    parse_grid,
    run_settings,
)
from jisi_graph.sweep_report import format_sweep_table, render_sweep_markdown, write_sweep_plot

FRONTIER = [Point(1, 0.5), Point(2, 0.4), Point(3, 0.7), Point(5, 0.6)]


def test_envelope_keeps_the_staircase() -> None:
    assert [(p.cost, p.accuracy) for p in envelope(FRONTIER)] == [(1, 0.5), (3, 0.7)]
    # Equal cost: the more accurate; equal accuracy: the cheaper.
    tied = [Point(2, 0.5), Point(2, 0.6), Point(1, 0.6), Point(4, 0.9)]
    assert [(p.cost, p.accuracy) for p in envelope(tied)] == [(1, 0.6), (4, 0.9)]
    assert envelope([]) == []
    assert best_within(FRONTIER, 0.5) == 0.0
    assert best_within(FRONTIER, 2.5) == 0.5
    assert best_within(FRONTIER, 9) == 0.7


def test_area_under_the_staircase_by_hand() -> None:
    # [1, 5]: .5 over [1, 3), .7 over [3, 5] -> (2 * .5 + 2 * .7) / 4.
    assert area_under(FRONTIER, 1, 5) == pytest.approx(0.6)
    # [0, 4]: 0 over [0, 1), .5 over [1, 3), .7 over [3, 4] -> (0 + 1 + .7) / 4.
    assert area_under(FRONTIER, 0, 4) == pytest.approx(0.425)
    # A range that starts past a step: [2, 4] -> (.5 + .7) / 2.
    assert area_under(FRONTIER, 2, 4) == pytest.approx(0.6)
    # Log cost over [1, 4]: (.5 ln 3 + .7 ln(4/3)) / ln 4.
    expected = (0.5 * math.log(3) + 0.7 * math.log(4 / 3)) / math.log(4)
    assert area_under(FRONTIER, 1, 4, log=True) == pytest.approx(expected)
    assert area_under(FRONTIER, 0, 4, log=True) is None
    # A degenerate range is f there; a method dearer than the whole range scores 0.
    assert area_under(FRONTIER, 3, 3) == pytest.approx(0.7)
    assert area_under([Point(10, 0.9)], 1, 5) == 0.0
    assert area_under([], 1, 5) == 0.0
    with pytest.raises(ValueError, match="empty cost range"):
        area_under(FRONTIER, 5, 1)


def test_cheapest_match() -> None:
    match = cheapest_match(FRONTIER, 0.45)
    assert match is not None and (match.cost, match.accuracy) == (1, 0.5)
    match = cheapest_match(FRONTIER, 0.6)
    assert match is not None and (match.cost, match.accuracy) == (3, 0.7)
    # Equal accuracy (up to float noise) matches.
    match = cheapest_match(FRONTIER, 0.7 + 1e-12)
    assert match is not None and match.cost == 3
    assert cheapest_match(FRONTIER, 0.71) is None


def test_grids() -> None:
    assert DEFAULT_COST_WEIGHTS[0] == 0.0 and DEFAULT_COST_WEIGHTS[-1] == 1.0
    assert list(DEFAULT_COST_WEIGHTS) == sorted(set(DEFAULT_COST_WEIGHTS))
    assert len(DEFAULT_COST_WEIGHTS) == 18
    assert default_jisi_grid() == [{"cost_weight": w} for w in DEFAULT_COST_WEIGHTS] + [
        {"cost_weight": w, "probe_margin": 0.0} for w in DEFAULT_COST_WEIGHTS
    ]
    assert parse_grid(["cost_weight=0,0.5", "top_k=2,3"]) == [
        {"cost_weight": "0", "top_k": "2"},
        {"cost_weight": "0", "top_k": "3"},
        {"cost_weight": "0.5", "top_k": "2"},
        {"cost_weight": "0.5", "top_k": "3"},
    ]
    for bad in (["cost_weight"], ["=1"], ["cost_weight="]):
        with pytest.raises(EvalConfigError, match="KNOB=V1,V2"):
            parse_grid(bad)
    with pytest.raises(EvalConfigError, match="twice"):
        parse_grid(["top_k=1", "top_k=2"])
    assert parse_alphas(None) == list(DEFAULT_ALPHAS)
    assert DEFAULT_ALPHAS[0] == 0.0 and DEFAULT_ALPHAS[-1] == 1.0 and len(DEFAULT_ALPHAS) == 21
    assert parse_alphas("0, 0.7,1,0.7") == [0.0, 0.7, 1.0]
    for bad in ("1.2", "x", ""):
        with pytest.raises(EvalConfigError, match="--alphas"):
            parse_alphas(bad)


def test_a_knob_set_to_its_default_is_not_the_base_run() -> None:
    from jisi_graph.calibration import Calibration
    from jisi_graph.evaluate import eval_context

    pool = ["a", "b"]
    calibration = Calibration(manifest_sha256="x", pool=pool, knobs={"cost_weight": 0.4})
    base = eval_context({})
    # Equal values, but cost_weight=0 set by the caller overrides a calibrated cost weight.
    assert eval_context({"cost_weight": "0"}) == base
    assert run_settings(eval_context({"cost_weight": "0"}), calibration, pool) != run_settings(
        base, calibration, pool
    )
    assert run_settings(base, calibration, pool).cost_weight == 0.4
    assert run_settings(eval_context({"top_k": "2"}), calibration, pool) == run_settings(
        eval_context({"top_k": "2"}), calibration, pool
    )
    # without a calibration, the same values are the same run
    assert run_settings(eval_context({"cost_weight": "0"}), None, pool) == base


# --------------------------------------------------------------------------------------------
# The analysis of a hand-made sweep
#
# singles: A (cost 1, .5), B (cost 4, .8); reference R (cost 8, .9); range [1, 4].
# jisi: (2, .6) (3, .85) (6, .95); avengers-pro: (0.5, .4) (1.5, .7) (4, .75).
# --------------------------------------------------------------------------------------------


def result(cost: float, accuracy: float) -> MethodResult:
    return MethodResult(accuracy, accuracy, cost, {"x": accuracy})


@pytest.fixture
def hand_sweep() -> SweepReport:
    base = EvalReport(
        methods={"jisi": result(3, 0.85)},
        jisi={},
        run={"data": "hand.jsonl", "split": "test", "rows": 2, "pool": ["A", "B"]},
    )
    return SweepReport(
        curves={
            "jisi": [
                Point(2, 0.6, {"cost_weight": 0.5}),
                Point(3, 0.85, {"cost_weight": 0.0}),
                Point(6, 0.95, {"cost_weight": 0.1}),
            ],
            "avengers-pro": [
                Point(0.5, 0.4, {"alpha": 0.0}),
                Point(1.5, 0.7, {"alpha": 0.5}),
                Point(4, 0.75, {"alpha": 1.0}),
            ],
        },
        points={
            "jisi": Point(3, 0.85),
            "single:A": Point(1, 0.5),
            "single:B": Point(4, 0.8),
            "reference:R": Point(8, 0.9),
        },
        base=base,
        run={"data": "hand.jsonl", "split": "test", "rows": 2, "pool": ["A", "B"]},
    )


def test_sweep_areas_and_matches(hand_sweep: SweepReport) -> None:
    assert hand_sweep.cost_range() == (1, 4)
    areas = hand_sweep.areas()
    # jisi over [1, 4]: 0 on [1, 2), .6 on [2, 3), .85 on [3, 4] -> 1.45 / 3.
    assert areas["jisi"]["linear"] == pytest.approx(1.45 / 3)
    # avengers-pro: .4 on [1, 1.5), .7 on [1.5, 4] -> (.2 + 1.75) / 3.
    assert areas["avengers-pro"]["linear"] == pytest.approx(1.95 / 3)
    # single models: .5 on [1, 4].
    assert areas["single models"]["linear"] == pytest.approx(0.5)
    expected_log = (0.6 * math.log(1.5) + 0.85 * math.log(4 / 3)) / math.log(4)
    assert areas["jisi"]["log"] == pytest.approx(expected_log)
    matches = hand_sweep.matches()
    assert set(matches) == {"single:A", "single:B", "reference:R"}
    assert matches["single:A"]["jisi"]["knobs"] == {"cost_weight": 0.5}
    assert matches["single:A"]["jisi"]["cost_ratio"] == pytest.approx(2.0)
    assert matches["single:A"]["avengers-pro"]["knobs"] == {"alpha": 0.5}
    assert matches["single:B"]["jisi"]["cost_usd"] == 3
    assert matches["single:B"]["jisi"]["cost_ratio"] == pytest.approx(0.75)
    assert matches["single:B"]["avengers-pro"] is None
    assert matches["reference:R"]["jisi"]["knobs"] == {"cost_weight": 0.1}
    assert matches["reference:R"]["avengers-pro"] is None


def test_sweep_forms(hand_sweep: SweepReport, tmp_path: Path) -> None:
    data = json.loads(json.dumps(hand_sweep.to_dict()))
    assert data["cost_range_usd"] == [1, 4]
    assert [p["cost_usd"] for p in data["envelopes"]["jisi"]] == [2, 3, 6]
    assert data["curves"]["avengers-pro"][1] == {
        "knobs": {"alpha": 0.5},
        "cost_usd": 1.5,
        "accuracy_macro": 0.7,
    }
    assert data["matches"]["single:B"]["avengers-pro"] is None
    assert "step function" in data["area_note"]
    table = format_sweep_table(hand_sweep)
    assert "jisi: 48.33 / " in table
    assert "single:B (80.00 %, 4.0000 USD): jisi: cost_weight=0.0: 85.00 % for 3.0000 USD" in table
    markdown = render_sweep_markdown(hand_sweep)
    assert "| avengers-pro | 65.00 |" in markdown
    assert "| single:B | 80.00 | 4.0000 | cost_weight=0.0: 85.00 % for 3.0000 USD, 75% of its" in (
        markdown
    )
    assert "| none |" in markdown
    path = tmp_path / "sweep.png"
    write_sweep_plot(hand_sweep, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# The command on a tiny real bank slice (conftest's `real_bank_dir`: 40 train rows, 3 models)
# --------------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    from jisi_graph.cli import app

    return CliRunner().invoke(app, ["eval", *args])


@pytest.mark.slow
def test_cli_sweep_on_a_tiny_bank(real_bank_dir: Path, data_file: Path, tmp_path: Path) -> None:
    from jisi_graph.bank.loaders import load_rows
    from jisi_graph.bank.store import Bank
    from jisi_graph.baselines.avengers_pro import AvengersPro
    from jisi_graph.embedding import load_embedder
    from jisi_graph.embedding_cache import embed_queries

    out = tmp_path / "sweep.json"
    result = invoke(
        "--data", str(data_file), "--bank", str(real_bank_dir), "--limit", "4",
        "--concurrency", "2", "--sweep", "--sweep-grid", "cost_weight=0,1",
        "--alphas", "0,1", "--json", str(out), "--markdown", str(tmp_path / "s.md"),
        "--plot", str(tmp_path / "s.png"), "--rows", str(tmp_path / "rows.jsonl"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "area under the curve" in result.output
    report = json.loads(out.read_text())
    assert [p["knobs"] for p in report["curves"]["jisi"]] == [
        {"cost_weight": "0"},
        {"cost_weight": "1"},
    ]
    assert [p["knobs"] for p in report["curves"]["avengers-pro"]] == [
        {"alpha": 0.0},
        {"alpha": 1.0},
    ]
    base = report["base"]["methods"]
    singles = {k: v for k, v in base.items() if k.startswith("single:")}
    assert len(singles) == 3
    costs = [v["cost_usd"] for v in singles.values()]
    assert report["cost_range_usd"] == pytest.approx([min(costs), max(costs)])
    assert set(report["matches"]) == set(singles)
    # On a bank without calibration, cost_weight = 0 runs exactly as the base run (default) did.
    first = report["curves"]["jisi"][0]
    assert first["accuracy_macro"] == base["jisi"]["accuracy_macro"]
    assert first["cost_usd"] == pytest.approx(base["jisi"]["cost_usd"])
    cache = report["run"]["embedding_cache"]
    assert cache["hits"] > 0 and cache["misses"] >= cache["misses_after_base_run"]
    # Avengers-Pro at alpha 1, computed directly, matches the curve's point.
    bank = Bank.load(real_bank_dir)
    rows = load_rows(data_file, split="test", limit=4)
    router = AvengersPro.from_bank(bank, bank.models)
    queries = embed_queries(load_embedder(), [row.query for row in rows])
    picks = router.picks(queries, alpha=1.0)
    accuracy = np.mean([row.records.get(pick, 0.0) for row, pick in zip(rows, picks, strict=True)])
    cost = sum(
        (row.usages[p].cost or 0.0) if p in row.usages else 0.0
        for row, p in zip(rows, picks, strict=True)
    )
    point = report["curves"]["avengers-pro"][1]
    assert point["accuracy_micro"] == pytest.approx(accuracy)
    assert point["cost_usd"] == pytest.approx(cost)
    assert (tmp_path / "s.md").read_text().startswith("# JiSi frontier sweep")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep-grid", "cost_weight=0,1"], "only apply with --sweep"),
        (["--alphas", "0.5"], "only apply with --sweep"),
        (["--sweep", "--sweep-grid", "cost_weight"], "--sweep-grid expects KNOB=V1,V2"),
        (["--sweep", "--sweep-grid", "nope=1,2"], "unknown knob 'nope'"),
        (["--sweep", "--sweep-grid", "cost_weight=0,2"], "cost_weight"),
        (["--sweep", "--sweep-grid", "aggregation=vote,llm"], "cannot be evaluated"),
        (["--sweep", "--alphas", "0,1.5"], "--alphas expects numbers in [0, 1]"),
    ],
)
def test_cli_sweep_errors(args: list[str], message: str, tmp_path: Path) -> None:
    # Every one is refused before the bank is read (the bank path does not exist).
    result = invoke("--data", "rows.jsonl", "--bank", str(tmp_path / "none"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
