"""The benchmark scripts keep working: their helpers, and the routing benchmark at tiny sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_routing  # noqa: E402
from common import Spread, percentile_ms, run_measured  # noqa: E402


def test_spread_is_median_min_max() -> None:
    spread = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high) == (2.5, 1.0, 10.0)
    assert spread.format(1, " s") == "2.5 (1.0 .. 10.0) s"
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_percentile_in_milliseconds() -> None:
    assert percentile_ms([0.001, 0.002, 0.003], 50) == pytest.approx(2.0)
    assert percentile_ms([0.001] * 99 + [0.101], 99) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no durations"):
        percentile_ms([], 50)


def test_run_measured_reports_code_output_and_peak_memory() -> None:
    run = run_measured(
        [sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
         "print('done')"]
    )  # fmt: skip
    assert run.code == 0 and run.stdout.strip() == "done"
    assert 300 <= run.peak_mib < 1000
    assert run.wall > 0
    failed = run_measured([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed.code == 3


def test_synthetic_bank_shapes_and_unit_queries() -> None:
    bank, centres = bench_routing.synthetic_bank(300, models=4, dim=16)
    assert bank.size == 300 and bank.models == [f"model-{i}" for i in range(4)]
    assert bank.answer_embeddings.shape == (300, 4, 16)
    assert bank.scores.shape == (300, 4) and set(np.unique(bank.scores)) <= {0.0, 1.0}
    assert centres.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(bank.query_embeddings, axis=1), 1.0, atol=1e-5)


def test_routing_decision_on_a_small_bank() -> None:
    bank, centres = bench_routing.synthetic_bank(400, dim=32)
    rng = np.random.default_rng(5)
    query = bench_routing.clustered_vectors(rng, centres, 1)[0]
    probes = rng.standard_normal((3, 32)).astype(np.float32)
    decision = bench_routing.routing_decision(
        bank, bank.comprehensive_ability(), query, probes, np.array([100.0, 200.0, 300.0])
    )
    assert decision.support_size >= 50  # k = 50 is a minimum
    assert len(set(decision.probes)) == 3 and len(set(decision.candidates)) == 3
    assert 1 <= decision.n <= 3
    assert 0 <= decision.aggregator < 10


def test_routing_benchmark_runs_at_tiny_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    results = bench_routing.main(["--sizes", "200,600", "--queries", "12"])
    assert [r["rows"] for r in results] == [200, 600]
    for result in results:
        assert result["queries"] == 12
        assert result["support_median"] >= 50
        assert 0 < result["search_p50_ms"] <= result["search_p99_ms"]
        assert 0 < result["decision_p50_ms"] <= result["decision_p99_ms"]
        # a decision includes its own search, so it is never faster than a bare one by much
        assert result["ratio_p50"] > 0.5
    printed = capsys.readouterr().out
    assert "routing overhead vs bare FAISS flat search" in printed
    assert "machine: " in printed and "load average" in printed
