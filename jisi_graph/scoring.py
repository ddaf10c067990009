"""Scoring an evaluation: per-row picks, scores and costs of JiSi and the baselines.

Pure functions, no graph and no I/O: given the test rows (their recorded scores and costs) and
the decisions the graph made on them, each method yields one `Outcome` per row, and `summarise`
turns a method's outcomes into macro / micro accuracy, per-dataset accuracy and total cost.

Grading rules, shared by every method: a model's score on a row is its recorded score there, and
a model with no record on a row scores 0 and costs 0 there. A recorded cost of null counts as 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from jisi_graph.bank.schema import BankRow
from jisi_graph.state import Decision

ROUTED_ONLY_NOTE = (
    "reference code's way of counting router-only cost: the routed model's own recorded cost, "
    "without the probes"
)


@dataclass(frozen=True)
class Outcome:
    """What one method did on one row: the model it picked, the score and the cost of that."""

    pick: str | None
    score: float
    cost: float


@dataclass
class MethodResult:
    """One method over all rows: accuracies in [0, 1], total cost in USD, and extras."""

    accuracy_macro: float
    accuracy_micro: float
    cost_usd: float
    per_dataset: dict[str, float]
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """The JSON form: the four required fields, then the extras."""
        return {
            "accuracy_macro": self.accuracy_macro,
            "accuracy_micro": self.accuracy_micro,
            "cost_usd": self.cost_usd,
            "per_dataset": dict(self.per_dataset),
            **self.extra,
        }


def recorded_score(row: BankRow, model: str | None) -> float:
    """The model's recorded score on the row; 0 for no model or no record."""
    if model is None:
        return 0.0
    return float(row.records.get(model, 0.0))


def recorded_cost(row: BankRow, model: str | None) -> float:
    """The model's recorded cost on the row; 0 for no model, no usage or a null cost."""
    if model is None or model not in row.usages:
        return 0.0
    return float(row.usages[model].cost or 0.0)


def score_single(rows: Sequence[BankRow], model: str) -> list[Outcome]:
    """One model answering every row."""
    return [Outcome(model, recorded_score(r, model), recorded_cost(r, model)) for r in rows]


def score_random(rows: Sequence[BankRow], pool: Sequence[str]) -> list[Outcome]:
    """The expectation of a uniformly random pool model: per row, pool means of score and cost."""
    _require_pool(pool)
    return [
        Outcome(
            None,
            sum(recorded_score(r, m) for m in pool) / len(pool),
            sum(recorded_cost(r, m) for m in pool) / len(pool),
        )
        for r in rows
    ]


def score_oracle(rows: Sequence[BankRow], pool: Sequence[str]) -> list[Outcome]:
    """Per row, the best pool score, paying for the cheapest model that reaches it.

    If no pool model scores above 0, the oracle scores 0 and pays the cheapest model that has a
    record on the row. Ties of cost go to pool order.
    """
    _require_pool(pool)
    outcomes = []
    for row in rows:
        answered = [m for m in pool if m in row.records]
        if not answered:
            outcomes.append(Outcome(None, 0.0, 0.0))
            continue
        best = max(recorded_score(row, m) for m in answered)
        reaching = [m for m in answered if recorded_score(row, m) == best]
        cheapest = min(reaching, key=lambda m: recorded_cost(row, m))
        outcomes.append(Outcome(cheapest, best, recorded_cost(row, cheapest)))
    return outcomes


def score_jisi(rows: Sequence[BankRow], decisions: Sequence[Decision | None]) -> list[Outcome]:
    """The graph's own answer, graded by the record of `answer_source`; its cost is every call's.

    A row where the graph raised (decision None) or answered nothing scores 0.
    """
    _require_aligned(rows, decisions)
    outcomes = []
    for row, decision in zip(rows, decisions, strict=True):
        if decision is None:
            outcomes.append(Outcome(None, 0.0, 0.0))
            continue
        source = decision.answer_source if decision.mode != "error" else None
        outcomes.append(Outcome(source, recorded_score(row, source), decision.cost_usd))
    return outcomes


def router_only_pick(decision: Decision) -> str | None:
    """The top candidate by routing score among those that answered."""
    for candidate in decision.candidates:
        if candidate.answered:
            return candidate.model
    return None


def router_only_cost(decision: Decision, pick: str | None) -> float:
    """Honest router-only cost: every probe call, plus the pick's own call if not a probe."""
    cost = sum(call.cost_usd for call in decision.calls if call.role == "probe")
    if pick is not None and pick not in decision.probes:
        cost += sum(
            call.cost_usd
            for call in decision.calls
            if call.role == "candidate" and call.model == pick
        )
    return cost


def score_router_only(
    rows: Sequence[BankRow], decisions: Sequence[Decision | None]
) -> tuple[list[Outcome], list[float]]:
    """JiSi without the switch: the top answered candidate.

    Returns the outcomes at honest cost, and per row the cost as the reference code counts it
    (the routed model's recorded cost alone).
    """
    _require_aligned(rows, decisions)
    outcomes, routed_only = [], []
    for row, decision in zip(rows, decisions, strict=True):
        if decision is None:
            outcomes.append(Outcome(None, 0.0, 0.0))
            routed_only.append(0.0)
            continue
        pick = router_only_pick(decision)
        outcomes.append(Outcome(pick, recorded_score(row, pick), router_only_cost(decision, pick)))
        routed_only.append(recorded_cost(row, pick))
    return outcomes, routed_only


def query_knn_pick(decision: Decision, pool: Sequence[str]) -> str | None:
    """The pool model with the highest support-set score P; ties go to pool order."""
    best, best_score = None, -math.inf
    for model in pool:
        score = decision.support_scores.get(model)
        if score is not None and score > best_score:
            best, best_score = model, score
    return best


def score_query_knn(
    rows: Sequence[BankRow], decisions: Sequence[Decision | None], pool: Sequence[str]
) -> list[Outcome]:
    """Route by query similarity alone (argmax of P), paying that model's recorded cost."""
    _require_aligned(rows, decisions)
    outcomes = []
    for row, decision in zip(rows, decisions, strict=True):
        pick = query_knn_pick(decision, pool) if decision is not None else None
        outcomes.append(Outcome(pick, recorded_score(row, pick), recorded_cost(row, pick)))
    return outcomes


def best_on_bank(ability: Mapping[str, float], pool: Sequence[str]) -> str:
    """The pool model with the highest bank-wide mean score; ties go to pool order."""
    _require_pool(pool)
    known = [m for m in pool if m in ability and not math.isnan(ability[m])]
    if not known:
        raise ValueError("no pool model has a score in the bank")
    return max(known, key=lambda m: ability[m])


def summarise(
    rows: Sequence[BankRow], outcomes: Sequence[Outcome], extra: Mapping[str, object] | None = None
) -> MethodResult:
    """Macro accuracy (mean of per-dataset means), micro accuracy (over rows), total cost."""
    if len(rows) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(rows)} rows")
    if not rows:
        raise ValueError("no rows to summarise")
    by_dataset: dict[str, list[float]] = defaultdict(list)
    for row, outcome in zip(rows, outcomes, strict=True):
        by_dataset[row.dataset].append(outcome.score)
    per_dataset = {name: sum(s) / len(s) for name, s in by_dataset.items()}
    picks = Counter(o.pick for o in outcomes if o.pick is not None)
    return MethodResult(
        accuracy_macro=sum(per_dataset.values()) / len(per_dataset),
        accuracy_micro=sum(o.score for o in outcomes) / len(outcomes),
        cost_usd=sum(o.cost for o in outcomes),
        per_dataset=per_dataset,
        extra={**(extra or {}), "picks": dict(picks.most_common())},
    )


def score_methods(
    rows: Sequence[BankRow],
    decisions: Sequence[Decision | None],
    pool: Sequence[str],
    *,
    references: Sequence[str] = (),
    bank_ability: Mapping[str, float] | None = None,
) -> dict[str, list[Outcome]]:
    """Per-row outcomes of every method, by method name (the report's keys)."""
    outcomes: dict[str, list[Outcome]] = {
        "jisi": score_jisi(rows, decisions),
        "jisi-router-only": score_router_only(rows, decisions)[0],
        "query-knn": score_query_knn(rows, decisions, pool),
    }
    if bank_ability is not None:
        outcomes["best-single-on-bank"] = score_single(rows, best_on_bank(bank_ability, pool))
    outcomes["oracle"] = score_oracle(rows, pool)
    outcomes["random"] = score_random(rows, pool)
    for model in pool:
        outcomes[f"single:{model}"] = score_single(rows, model)
    for model in references:
        outcomes[f"reference:{model}"] = score_single(rows, model)
    return outcomes


def summarise_methods(
    rows: Sequence[BankRow],
    decisions: Sequence[Decision | None],
    outcomes: Mapping[str, Sequence[Outcome]],
) -> dict[str, MethodResult]:
    """Every method's summary; router-only also carries the reference code's cost."""
    results = {name: summarise(rows, per_row) for name, per_row in outcomes.items()}
    if "jisi-router-only" in results:
        routed_only = score_router_only(rows, decisions)[1]
        results["jisi-router-only"].extra.update(
            cost_usd_routed_only=sum(routed_only), cost_usd_routed_only_note=ROUTED_ONLY_NOTE
        )
    if "best-single-on-bank" in results:
        model = outcomes["best-single-on-bank"][0].pick if rows else None
        results["best-single-on-bank"].extra["model"] = model
    return results


def _require_pool(pool: Sequence[str]) -> None:
    if not pool:
        raise ValueError("the pool is empty")


def _require_aligned(rows: Sequence[BankRow], decisions: Sequence[Decision | None]) -> None:
    if len(rows) != len(decisions):
        raise ValueError(f"{len(decisions)} decisions for {len(rows)} rows")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def fallback_kind(fallback: str) -> str:
    """A fallback's reason with its figures as `#`, so that alike reasons count together."""
    return _NUMBER.sub("#", fallback)


def _probed(decision: Decision) -> bool:
    return any(call.role == "probe" for call in decision.calls)


def run_statistics(decisions: Sequence[Decision | None]) -> dict[str, object]:
    """How the graph behaved: how often it aggregated, voted, routed, failed; calls per row."""
    n = len(decisions)
    done = [d for d in decisions if d is not None]
    if n == 0:
        return {"rows": 0}
    failed_calls = Counter(call.model for d in done for call in d.calls if not call.ok)
    fallbacks = Counter(fallback_kind(d.fallback) for d in done if d.fallback)
    switch = Counter(str(d.switch_n) for d in done)

    def fraction(count: int) -> float:
        return count / n

    return {
        "rows": n,
        "aggregated_fraction": fraction(sum(d.mode == "aggregate" for d in done)),
        "vote_fraction": fraction(sum(d.aggregation_method == "vote" for d in done)),
        "routed_fraction": fraction(sum(d.mode == "route" for d in done)),
        "votable_fraction": fraction(sum(d.votable for d in done)),
        "mean_calls": sum(len(d.calls) for d in done) / len(done) if done else 0.0,
        "extra_candidate_call_fraction": fraction(
            sum(_probed(d) and any(c.role == "candidate" for c in d.calls) for d in done)
        ),
        "no_probe_fraction": fraction(sum(bool(d.calls) and not _probed(d) for d in done)),
        "mean_support_size": sum(d.support_size for d in done) / len(done) if done else 0.0,
        "switch_n": dict(sorted(switch.items())),
        "failures": sum(failed_calls.values()),
        "failures_by_model": dict(failed_calls.most_common()),
        "error_rows": sum(d is None or d.mode == "error" for d in decisions),
        "fallbacks": dict(fallbacks.most_common()),
    }
