"""Prices read off recorded rows, and a pool file for a replay server.

A JiSi row records each answer's prompt tokens, completion tokens and cost. Fitting
`cost = input_tokens * p_in + output_tokens * p_out` over a model's rows (non-negative least
squares) recovers its prices in USD per million tokens, so a pool that replays the data is priced
as the data was. This lets `jisi replay-serve --write-pool` hand a user a pool file that works
with `jisi ask` and `jisi serve` at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import nnls

from jisi_graph.bank.schema import BankRow

PER_MILLION = 1e6


def fit_prices(
    input_tokens: np.ndarray, output_tokens: np.ndarray, costs: np.ndarray
) -> tuple[float, float]:
    """USD per million (input, output) tokens that best explain `costs` (non-negative fit).

    With no usable observation (no tokens, or no cost) the prices are (0, 0).
    """
    design = np.column_stack([input_tokens, output_tokens]).astype(np.float64)
    target = np.asarray(costs, dtype=np.float64)
    usable = np.isfinite(target) & (design.sum(axis=1) > 0)
    if not usable.any():
        return 0.0, 0.0
    prices, _ = nnls(design[usable], target[usable])
    return float(prices[0] * PER_MILLION), float(prices[1] * PER_MILLION)


def recorded_prices(
    rows: Sequence[BankRow], models: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Each model's (input, output) USD per million tokens, fitted on its recorded usages."""
    prices: dict[str, tuple[float, float]] = {}
    for model in models:
        usages = [row.usages[model] for row in rows if model in row.usages]
        recorded = [u for u in usages if u.cost is not None]
        prices[model] = fit_prices(
            np.array([u.prompt_tokens for u in recorded], dtype=np.float64),
            np.array([u.completion_tokens for u in recorded], dtype=np.float64),
            np.array([u.cost for u in recorded], dtype=np.float64),
        )
    return prices


def replay_pool_yaml(
    base_url: str, prices: dict[str, tuple[float, float]], *, significant: int = 4
) -> str:
    """A pool file (YAML text) whose every model is served at `base_url` at `prices`."""
    spec = {
        "defaults": {"base_url": base_url},
        "models": [
            {
                "name": name,
                "input_price": float(f"{price_in:.{significant}g}"),
                "output_price": float(f"{price_out:.{significant}g}"),
            }
            for name, (price_in, price_out) in prices.items()
        ],
    }
    header = (
        "# Pool of replayed models served by `jisi replay-serve` at "
        f"{base_url}\n# Prices (USD per million tokens) are fitted on the recorded usages.\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def write_replay_pool(
    path: str | Path, base_url: str, rows: Sequence[BankRow], models: Sequence[str]
) -> Path:
    """Write the replay pool file for `models` of `rows` at `path`; returns the path."""
    target = Path(path)
    target.write_text(replay_pool_yaml(base_url, recorded_prices(rows, models)), encoding="utf-8")
    return target
