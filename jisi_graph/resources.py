"""What the graph works with besides its state: the bank, the embedder and the pool.

`build_graph(resources)` binds them once; the module-level graph (Studio, `langgraph.json`)
loads them on first use from the context's `bank` and `pool` (or the JISI_BANK and JISI_POOL
environment variables) and keeps them for the next runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jisi_graph.bank.store import Bank
from jisi_graph.calibration import Calibration, apply_calibration, load_calibration
from jisi_graph.context import BANK_ENV, POOL_ENV, JisiContext
from jisi_graph.embedding import Embedder, load_embedder
from jisi_graph.pool import Pool, PoolError


class ConfigurationError(ValueError):
    """The graph cannot run: no bank or pool configured, or they do not fit together."""


@dataclass
class Resources:
    """A bank, the embedder it was built with, a pool of models it knows, and its calibration.

    `calibration` defaults to the bank directory's `calibration.json`, if it has one.
    """

    bank: Bank
    embedder: Embedder
    pool: Pool
    calibration: Calibration | None = None
    active: np.ndarray = field(init=False, repr=False)
    aggregator_allowed: np.ndarray = field(init=False, repr=False)
    comprehensive: np.ndarray = field(init=False, repr=False)
    unused_bank_models: list[str] = field(init=False)

    def __post_init__(self) -> None:
        """Check that bank, embedder and pool fit; mark the bank's models the pool can call."""
        self.bank.check_embedder(self.embedder.id, self.embedder.dim, self.embedder.window)
        unknown = [name for name in self.pool.names if name not in self.bank.models]
        if unknown:
            raise ConfigurationError(
                f"the pool names models the bank does not know: {', '.join(unknown)}; "
                f"the bank's models are: {', '.join(self.bank.models)}"
            )
        in_pool = set(self.pool.names)
        self.active = np.array([name in in_pool for name in self.bank.models], dtype=bool)
        self.unused_bank_models = [name for name in self.bank.models if name not in in_pool]
        self.aggregator_allowed = np.array(
            [
                name in in_pool and self.pool.model_spec(name).aggregator
                for name in self.bank.models
            ],
            dtype=bool,
        )
        self.comprehensive = self.bank.comprehensive_ability()
        if self.calibration is None:
            self.calibration = load_calibration(self.bank.path)

    def effective_context(self, context: JisiContext) -> JisiContext:
        """The context a run uses: the bank's calibrated knobs where `context` sets none."""
        active = [name for name, on in zip(self.bank.models, self.active, strict=True) if on]
        return apply_calibration(context, self.calibration, active)[0]


ResourceProvider = Callable[[JisiContext], Resources]


def load_bank_embedder(bank: Bank, runtime: str | None = None) -> Embedder:
    """The embedder a bank was built with (its id and window), on `runtime` (default: the usual).

    The runtime may differ from the bank's: every runtime gives the same vectors to about 1e-4.
    """
    recorded = bank.manifest.embedder
    return load_embedder(recorded.id, runtime=runtime, window=recorded.window)


def fixed(resources: Resources) -> ResourceProvider:
    """A provider that always returns the same resources."""
    return lambda _context: resources


class CachedLoader:
    """Loads resources from the context's paths, once per (bank, pool) pair."""

    def __init__(self) -> None:
        """Start with nothing loaded."""
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Resources] = {}
        self._embedders: dict[tuple[str, int | None], Embedder] = {}

    def __call__(self, context: JisiContext) -> Resources:
        """Resources for this context's bank and pool, loaded on first use."""
        bank_path, pool_path = context.bank_path(), context.pool_path()
        if not bank_path:
            raise ConfigurationError(
                f"no bank configured: set the context field 'bank' or {BANK_ENV} "
                "to a directory made by `jisi bank build`"
            )
        if not pool_path:
            raise ConfigurationError(
                f"no pool configured: set the context field 'pool' or {POOL_ENV} to a pool file"
            )
        key = (bank_path, pool_path)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._load(bank_path, pool_path)
            return self._cache[key]

    def _load(self, bank_path: str, pool_path: str) -> Resources:
        bank = Bank.load(bank_path)
        recorded = bank.manifest.embedder
        key = (recorded.id, recorded.window)
        if key not in self._embedders:
            self._embedders[key] = load_bank_embedder(bank)
        try:
            pool = Pool.from_file(pool_path)
        except PoolError as error:
            raise ConfigurationError(str(error)) from None
        return Resources(bank=bank, embedder=self._embedders[key], pool=pool)
