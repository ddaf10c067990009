"""Prices fitted on recorded usages, and the replay pool file they go into."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_FILE

from jisi_graph.bank.loaders import load_rows
from jisi_graph.pool import load_pool_spec
from jisi_graph.recorded_prices import fit_prices, recorded_prices, write_replay_pool

DATA = DATA_FILE


def test_fit_recovers_known_prices() -> None:
    rng = np.random.default_rng(0)
    prompt = rng.integers(50, 2000, size=40).astype(float)
    completion = rng.integers(10, 800, size=40).astype(float)
    costs = (prompt * 2.5 + completion * 10.0) / 1e6
    price_in, price_out = fit_prices(prompt, completion, costs)
    assert price_in == pytest.approx(2.5, rel=1e-6)
    assert price_out == pytest.approx(10.0, rel=1e-6)


def test_fit_never_goes_negative_and_ignores_unusable_rows() -> None:
    # Unconstrained, the first two rows give a negative input price; row 3 has no tokens and
    # row 4 no cost, so neither counts.
    prompt = np.array([100.0, 300.0, 0.0, 300.0])
    completion = np.array([100.0, 100.0, 0.0, 100.0])
    costs = np.array([0.0002, 0.0001, 5.0, np.nan])
    price_in, price_out = fit_prices(prompt, completion, costs)
    assert price_in == pytest.approx(0.0, abs=1e-9)
    assert price_out == pytest.approx(1.5, rel=1e-6)


def test_no_observation_gives_zero_prices() -> None:
    empty = np.array([], dtype=float)
    assert fit_prices(empty, empty, empty) == (0.0, 0.0)


def test_fitted_prices_reproduce_recorded_costs_on_real_rows() -> None:
    rows = load_rows(DATA, split="train", limit=200)
    model = "Mistral-Large-2"
    price_in, price_out = recorded_prices(rows, [model])[model]
    assert price_in > 0 and price_out > 0
    recorded = [r.usages[model] for r in rows if model in r.usages and r.usages[model].cost]
    predicted = sum(u.prompt_tokens * price_in + u.completion_tokens * price_out for u in recorded)
    actual = sum(u.cost for u in recorded)
    assert predicted / 1e6 == pytest.approx(actual, rel=0.02)


def test_replay_pool_file_loads_as_a_pool(tmp_path: Path) -> None:
    rows = load_rows(DATA, split="test", limit=20)
    models = ["Mistral-Large-2", "gemma-2-9b-it"]
    path = write_replay_pool(tmp_path / "pool.yaml", "http://127.0.0.1:8100/v1", rows, models)
    spec = load_pool_spec(path)
    assert [m.name for m in spec.models] == models
    assert {m.base_url for m in spec.models} == {"http://127.0.0.1:8100/v1"}
    assert all(m.api_key_env is None for m in spec.models)
    assert spec.models[0].input_price > 0
