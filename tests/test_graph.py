"""The graph end to end: on a real bank with replay models, on every path of the switch with a
synthetic bank and scripted models, and over real HTTP with failing endpoints."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import (
    PATH_CONTEXT,
    PATH_MODELS,
    PATH_QUERIES,
    REAL_MODELS,
    OpenAIStub,
    ScriptedChat,
    basis,
    fake_embedder,
    make_row,
    scripted_pool,
    synthetic_source,
    unit,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from jisi_graph.bank.build import build_bank
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.pool import ModelSpec, Pool
from jisi_graph.replay import replay_pool
from jisi_graph.resources import Resources
from jisi_graph.state import Decision, ModelCall
from jisi_graph.tokens import count_tokens

# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def calls_of(decision: dict[str, Any]) -> list[ModelCall]:
    return [ModelCall.model_validate(call) for call in decision["calls"]]


def roles(decision: dict[str, Any]) -> list[tuple[str, str]]:
    """(model, role) of every call, probes first in model order, then the rest in order."""
    calls = calls_of(decision)
    probes = sorted((c.model, c.role) for c in calls if c.role == "probe")
    return probes + [(c.model, c.role) for c in calls if c.role != "probe"]


def check_accounting(out: dict[str, Any]) -> None:
    """The query's cost and usage are the sums over its calls, wherever they are reported."""
    decision = out["decision"]
    calls = calls_of(decision)
    assert out["cost_usd"] == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-12)
    assert decision["cost_usd"] == out["cost_usd"]
    assert out["usage"] == decision["usage"]
    assert out["usage"] == {
        "input_tokens": sum(c.input_tokens for c in calls),
        "output_tokens": sum(c.output_tokens for c in calls),
        "calls": len(calls),
    }


def scripted_models(
    replies: dict[str, str] | None = None, **overrides: dict[str, Any]
) -> dict[str, ScriptedChat]:
    """One scripted model per path model; `overrides[name]` sets its fields."""
    replies = replies or {}
    return {
        name: ScriptedChat(
            model_name=name,
            reply=replies.get(name, f"{name} answers"),
            **overrides.get(name, {}),
        )
        for name in PATH_MODELS
    }


def run_path(
    path_bank: tuple[Bank, Embedder],
    scenario: str,
    models: dict[str, ScriptedChat],
    *,
    prices: dict[str, tuple[float, float]] | None = None,
    aggregators: list[str] | None = None,
    **context: Any,
) -> dict[str, Any]:
    bank, embedder = path_bank
    pool = scripted_pool(models, prices=prices, aggregators=aggregators)
    graph = build_graph(Resources(bank=bank, embedder=embedder, pool=pool))
    out = graph.invoke({"query": PATH_QUERIES[scenario]}, context={**PATH_CONTEXT, **context})
    check_accounting(out)
    return out


# ------------------------------------------------------------------------------------------
# 1. The real bank with replay models
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_bank_answers_test_questions(
    real_bank: Bank,
    embedder: Embedder,
    real_rows: list[BankRow],
    real_test_rows: list[BankRow],
) -> None:
    pool = replay_pool([*real_rows, *real_test_rows], REAL_MODELS)
    graph = build_graph(Resources(bank=real_bank, embedder=embedder, pool=pool))
    modes = set()
    for row in real_test_rows:
        out = graph.invoke({"query": row.query})
        assert out["error"] is None
        decision = Decision.model_validate(out["decision"])
        modes.add(decision.mode)

        # The support set: the whole bank (40 rows < k = 50), neighbours by similarity.
        assert decision.support_size == real_bank.size
        sims = [n.similarity for n in decision.neighbours]
        assert len(sims) == 5
        assert sims == sorted(sims, reverse=True)
        assert all(n.dataset in real_bank.datasets for n in decision.neighbours)
        assert set(decision.support_scores) == set(REAL_MODELS)
        assert set(decision.routing_scores) == set(REAL_MODELS)
        assert all(0.0 <= s <= 1.0 for s in decision.support_scores.values() if s is not None)
        assert sorted(decision.probes) == sorted(REAL_MODELS)
        assert decision.aggregators[0] == max(
            decision.aggregator_scores, key=lambda m: decision.aggregator_scores[m] or -1
        )

        # Candidates, with the answers they gave (their recorded ones).
        assert 1 <= len(decision.candidates) <= 3
        for candidate in decision.candidates:
            assert candidate.answered
            assert candidate.answer == row.raw_output[candidate.model]
        assert 1 <= decision.switch_n <= len(decision.candidates)
        assert decision.mode == ("aggregate" if decision.switch_n >= 2 else "route")

        # The answer: the routed model's recorded one, or the aggregator's (replayed) reply.
        if decision.mode == "route":
            assert decision.answer_source == decision.candidates[0].model
            assert out["answer"] == row.raw_output[decision.answer_source]
            assert decision.aggregator is None
        else:
            assert decision.aggregation_method == "llm"
            assert decision.aggregator == decision.aggregators[0]
            assert out["answer"] == row.raw_output[decision.aggregator]
            assert (
                decision.aggregated == [c.model for c in decision.candidates][: decision.switch_n]
            )

        # Every call: tokens, cost and latency, as recorded in the data.
        for call in decision.calls:
            assert call.ok and call.cost_source == "recorded"
            usage = row.usages[call.model]
            assert (call.input_tokens, call.output_tokens) == (
                usage.prompt_tokens,
                usage.completion_tokens,
            )
            assert call.cost_usd == usage.cost
            assert call.latency_s >= 0
            assert call.answer_tokens == count_tokens(call.answer or "")
        check_accounting(out)
        recorded = sum(row.usages[c.model].cost or 0.0 for c in decision.calls)
        assert out["cost_usd"] == pytest.approx(recorded, abs=1e-12)

        # The conversation: the question, then the answer as an AI message.
        messages = out["messages"]
        assert isinstance(messages[0], HumanMessage) and messages[0].content == row.query
        assert isinstance(messages[-1], AIMessage) and messages[-1].content == out["answer"]
    assert modes <= {"route", "aggregate"}


# ------------------------------------------------------------------------------------------
# 2. Every path of the switch (synthetic bank, scripted models)
# ------------------------------------------------------------------------------------------


def test_route_when_one_candidate_clears_the_threshold(path_bank: tuple[Bank, Embedder]) -> None:
    models = scripted_models()
    out = run_path(path_bank, "route", models)
    decision = out["decision"]
    # S = the route row only; P = R = its scores (1, .5, .4, .3): probes A, B, C.
    assert decision["support_size"] == 1
    assert decision["neighbours"][0]["id"] == "route"
    assert decision["neighbours"][0]["similarity"] == pytest.approx(1.0)
    assert decision["support_scores"] == pytest.approx({"A": 1.0, "B": 0.5, "C": 0.4, "D": 0.3})
    assert decision["routing_scores"] == pytest.approx({"A": 1.0, "B": 0.5, "C": 0.4, "D": 0.3})
    assert decision["probes"] == ["A", "B", "C"]
    assert [c["model"] for c in decision["candidates"]] == ["A", "B", "C"]
    assert [c["relative_score"] for c in decision["candidates"]] == pytest.approx([1, 0.5, 0.4])
    assert decision["switch_n"] == 1
    assert decision["mode"] == "route"
    assert decision["aggregation_method"] == "none"
    assert decision["aggregator"] is None and decision["aggregated"] == []
    assert decision["answer_source"] == "A"
    assert out["answer"] == "A answers"
    assert roles(decision) == [("A", "probe"), ("B", "probe"), ("C", "probe")]
    assert not any(entry["aggregating"] for m in models.values() for entry in m.log)


def test_aggregate_two_by_the_top_aggregator(path_bank: tuple[Bank, Embedder]) -> None:
    models = scripted_models(A={"aggregate_reply": "the merged answer"})
    out = run_path(path_bank, "agg2", models)
    decision = out["decision"]
    # R = (1, .9, .5, .1): relative .9 >= .8, .5 < .8, so n = 2: A and B.
    # G over the bank = (.58, .45, .74, .10); A = .5 G + .5 P = (.79, .675, .62, .10).
    assert decision["switch_n"] == 2
    assert decision["mode"] == "aggregate"
    assert decision["aggregation_method"] == "llm"
    assert decision["aggregated"] == ["A", "B"]
    assert decision["aggregator_scores"] == pytest.approx(
        {"A": 0.79, "B": 0.675, "C": 0.62, "D": 0.1}
    )
    assert decision["aggregators"] == ["A", "B", "C"]
    assert decision["aggregator"] == "A"
    assert decision["answer_source"] == "A"
    assert out["answer"] == "the merged answer"
    assert out["messages"][-1].content == "the merged answer"
    assert roles(decision) == [
        ("A", "probe"),
        ("B", "probe"),
        ("C", "probe"),
        ("A", "aggregator"),
    ]
    # The one aggregation call: the answers of A and B, in order, each in its own tag; the
    # user's query last; temperature 0.7.
    (call,) = [entry for entry in models["A"].log if entry["aggregating"]]
    system, user = call["messages"]
    assert isinstance(system, SystemMessage)
    assert "<Model_1_Response>\nA answers\n</Model_1_Response>" in system.content
    assert "<Model_2_Response>\nB answers\n</Model_2_Response>" in system.content
    assert "C answers" not in system.content
    assert user.content == PATH_QUERIES["agg2"]
    assert call["kwargs"]["temperature"] == 0.7


def test_aggregator_is_chosen_by_a_not_by_p(path_bank: tuple[Bank, Embedder]) -> None:
    out = run_path(path_bank, "agg3", scripted_models())
    decision = out["decision"]
    # R = (.9, .85, .8, .1): n = 3. A = .5 G + .5 P = (.74, .65, .77, .10): C aggregates,
    # although A has the best P.
    assert decision["switch_n"] == 3
    assert decision["aggregated"] == ["A", "B", "C"]
    assert decision["aggregators"] == ["C", "A", "B"]
    assert decision["aggregator"] == "C"
    assert out["answer"] == "aggregated by C"


def test_beta_zero_picks_the_aggregator_by_p_alone(path_bank: tuple[Bank, Embedder]) -> None:
    out = run_path(path_bank, "agg3", scripted_models(), aggregator_beta=0.0)
    assert out["decision"]["aggregators"] == ["A", "B", "C"]
    assert out["decision"]["aggregator"] == "A"


def test_pool_option_forbids_a_model_to_aggregate(path_bank: tuple[Bank, Embedder]) -> None:
    out = run_path(path_bank, "agg3", scripted_models(), aggregators=["A", "B", "D"])
    assert out["decision"]["aggregators"] == ["A", "B", "D"]
    assert out["decision"]["aggregator"] == "A"
    assert set(out["decision"]["aggregator_scores"]) == {"A", "B", "D"}


def test_vote_on_a_votable_support_set(path_bank: tuple[Bank, Embedder]) -> None:
    replies = {"A": "The answer is 41", "B": "The answer is 42", "C": "Answer: 42"}
    models = scripted_models(replies)
    out = run_path(path_bank, "agg3", models, aggregation="vote")
    decision = out["decision"]
    # 42 gathers .85 + .8 = 1.65 against .9 for 41: B, the best of the 42 group, wins.
    assert decision["votable"] is True
    assert decision["switch_n"] == 3
    assert decision["mode"] == "aggregate"
    assert decision["aggregation_method"] == "vote"
    assert decision["aggregated"] == ["A", "B", "C"]
    assert decision["aggregator"] is None
    assert decision["answer_source"] == "B"
    assert out["answer"] == "The answer is 42"
    assert [c["role"] for c in decision["calls"]] == ["probe"] * 3
    assert not any(entry["aggregating"] for m in models.values() for entry in m.log)


def test_vote_without_extractable_answers_routes(path_bank: tuple[Bank, Embedder]) -> None:
    replies = {"A": "Paris is nice", "B": "hello", "C": "so it goes"}
    out = run_path(path_bank, "agg3", scripted_models(replies), aggregation="vote")
    decision = out["decision"]
    assert decision["mode"] == "route"
    assert decision["answer_source"] == "A"
    assert out["answer"] == "Paris is nice"
    assert "no final answer could be extracted" in decision["fallback"]


def test_vote_requested_on_a_non_votable_support_set_routes(
    path_bank: tuple[Bank, Embedder],
) -> None:
    replies = {"A": "The answer is 41", "B": "The answer is 42", "C": "Answer: 42"}
    out = run_path(path_bank, "agg2", scripted_models(replies), aggregation="vote")
    decision = out["decision"]
    assert decision["votable"] is False
    assert decision["switch_n"] == 2
    assert decision["mode"] == "route"
    assert decision["aggregation_method"] == "none"
    assert decision["aggregated"] == []
    assert decision["answer_source"] == "A"
    assert out["answer"] == "The answer is 41"
    assert "not votable" in decision["fallback"]
    assert [c["role"] for c in decision["calls"]] == ["probe"] * 3


def test_vote_or_llm_uses_the_aggregator_where_not_votable(
    path_bank: tuple[Bank, Embedder],
) -> None:
    out = run_path(path_bank, "agg2", scripted_models(), aggregation="vote_or_llm")
    decision = out["decision"]
    assert decision["aggregation_method"] == "llm"
    assert decision["aggregator"] == "A"
    assert out["answer"] == "aggregated by A"


def test_every_aggregator_failing_routes_to_the_top_candidate(
    path_bank: tuple[Bank, Embedder],
) -> None:
    failing = {"aggregate_error": RuntimeError("aggregator down")}
    models = scripted_models(A=failing, B=failing, C=failing)
    out = run_path(path_bank, "agg3", models)
    decision = out["decision"]
    assert decision["switch_n"] == 3
    assert decision["mode"] == "route"
    assert decision["aggregator"] is None
    assert decision["answer_source"] == "A"
    assert out["answer"] == "A answers"
    assert out["error"] is None
    assert decision["fallback"] == "every aggregator failed: routed to the top candidate"
    aggregator_calls = [c for c in calls_of(decision) if c.role == "aggregator"]
    assert [c.model for c in aggregator_calls] == ["C", "A", "B"]
    assert all(not c.ok and c.error_kind == "error" for c in aggregator_calls)
    assert "aggregator down" in decision["failures"]["C (aggregator)"]


def test_max_aggregators_bounds_the_attempts(path_bank: tuple[Bank, Embedder]) -> None:
    failing = {"aggregate_error": RuntimeError("aggregator down")}
    models = scripted_models(A=failing, B=failing, C=failing)
    out = run_path(path_bank, "agg3", models, max_aggregators=2)
    aggregator_calls = [c for c in calls_of(out["decision"]) if c.role == "aggregator"]
    assert [c.model for c in aggregator_calls] == ["C", "A"]
    assert not any(entry["aggregating"] for entry in models["B"].log)


def test_second_aggregator_takes_over_when_the_first_fails(
    path_bank: tuple[Bank, Embedder],
) -> None:
    models = scripted_models(C={"aggregate_error": RuntimeError("aggregator down")})
    out = run_path(path_bank, "agg3", models)
    decision = out["decision"]
    assert decision["aggregator"] == "A"
    assert out["answer"] == "aggregated by A"
    assert [(c.model, c.ok) for c in calls_of(decision) if c.role == "aggregator"] == [
        ("C", False),
        ("A", True),
    ]


def test_candidate_that_was_not_a_probe_is_called(path_bank: tuple[Bank, Embedder]) -> None:
    prices = {"A": (1.0, 2.0), "B": (3.0, 4.0), "C": (5.0, 6.0), "D": (7.0, 8.0)}
    out = run_path(path_bank, "agg3", scripted_models(), prices=prices, sample_n=2)
    decision = out["decision"]
    assert decision["probes"] == ["A", "B"]
    assert [(c["model"], c["probe"]) for c in decision["candidates"]] == [
        ("A", True),
        ("B", True),
        ("C", False),
    ]
    assert roles(decision) == [
        ("A", "probe"),
        ("B", "probe"),
        ("C", "candidate"),
        ("C", "aggregator"),
    ]
    assert decision["aggregated"] == ["A", "B", "C"]
    assert decision["candidates"][2]["answer"] == "C answers"
    # Cost: A probe 100 x 1 + 10 x 2, B probe 100 x 3 + 10 x 4, C candidate 100 x 5 + 10 x 6,
    # C aggregator 400 x 5 + 20 x 6 (per million tokens).
    assert out["cost_usd"] == pytest.approx((120 + 340 + 560 + 2120) / 1e6, abs=1e-12)
    assert out["usage"] == {"input_tokens": 700, "output_tokens": 50, "calls": 4}


def test_failed_candidate_is_replaced_by_the_next_model(path_bank: tuple[Bank, Embedder]) -> None:
    models = scripted_models(C={"error": RuntimeError("C is down")})
    out = run_path(path_bank, "agg3", models, sample_n=2)
    decision = out["decision"]
    # C (not a probe) fails; D is next by R and is called in a second round.
    assert roles(decision)[:4] == [
        ("A", "probe"),
        ("B", "probe"),
        ("C", "candidate"),
        ("D", "candidate"),
    ]
    assert [c["model"] for c in decision["candidates"]] == ["A", "B", "D"]
    assert decision["failures"] == {"C": "error: RuntimeError: C is down"}
    # relative scores are over the candidates (best .9), as the switch computes them
    assert [c["relative_score"] for c in decision["candidates"]] == pytest.approx(
        [1.0, 0.85 / 0.9, 0.1 / 0.9], abs=1e-6
    )
    assert decision["switch_n"] == 2
    assert decision["aggregated"] == ["A", "B"]


def test_cut_length_aggregates_only_the_top_two(path_bank: tuple[Bank, Embedder]) -> None:
    replies = {"A": "The answer is 41", "B": "The answer is 42", "C": "Answer: 42"}
    tokens = [count_tokens(replies[m]) for m in "ABC"]
    assert sum(tokens) == 14
    out = run_path(path_bank, "agg3", scripted_models(replies), cut_length=13)
    assert out["decision"]["switch_n"] == 2
    assert out["decision"]["aggregated"] == ["A", "B"]
    assert out["decision"]["aggregator"] == "C"
    # at exactly the cut, nothing is cut
    out = run_path(path_bank, "agg3", scripted_models(replies), cut_length=14)
    assert out["decision"]["switch_n"] == 3
    assert out["decision"]["aggregated"] == ["A", "B", "C"]


def test_switch_threshold_is_relative_to_the_best(path_bank: tuple[Bank, Embedder]) -> None:
    # agg3: relative scores 1, .944, .889: t = .9 keeps two, t = .95 only the best.
    out = run_path(path_bank, "agg3", scripted_models(), switch_threshold=0.9)
    assert out["decision"]["switch_n"] == 2
    out = run_path(path_bank, "agg3", scripted_models(), switch_threshold=0.95)
    assert out["decision"]["switch_n"] == 1
    assert out["decision"]["mode"] == "route"
    assert out["answer"] == "A answers"


def test_failing_probe_is_recorded_and_the_others_answer(
    path_bank: tuple[Bank, Embedder],
) -> None:
    models = scripted_models(A={"error": TimeoutError("slow")})
    out = run_path(path_bank, "route", models)
    decision = out["decision"]
    # A fails; R over the others: B .5, C .4, D .3 -> D is called; .4/.5 = .8 clears t = .8.
    assert decision["failures"] == {"A": "timeout: the call timed out"}
    assert [c["model"] for c in decision["candidates"]] == ["B", "C", "D"]
    # relative to the best candidate (B), not to A which has the best R but failed
    assert [c["relative_score"] for c in decision["candidates"]] == pytest.approx([1, 0.8, 0.6])
    assert decision["switch_n"] == 2
    assert decision["aggregated"] == ["B", "C"]
    # A-scores here: A .79, C .57, B .475. A failed as a probe, so it is not tried as the
    # aggregator: C, the next by A, aggregates.
    assert decision["aggregators"] == ["C", "B", "D"]
    assert decision["aggregator"] == "C"
    assert out["answer"] == "aggregated by C"


def test_every_model_failing_is_an_error_result(path_bank: tuple[Bank, Embedder]) -> None:
    models = scripted_models(
        **{name: {"error": RuntimeError(f"{name} is down")} for name in PATH_MODELS}
    )
    out = run_path(path_bank, "route", models)
    assert out["answer"] == ""
    assert out["decision"]["mode"] == "error"
    for name in PATH_MODELS:
        assert f"{name}: error: RuntimeError: {name} is down" in out["error"]
    assert not any(isinstance(m, AIMessage) for m in out["messages"])


def test_model_missing_its_key_is_a_config_failure(
    path_bank: tuple[Bank, Embedder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JISI_TEST_MISSING_KEY", raising=False)
    bank, embedder = path_bank
    models = scripted_models()
    specs = [
        ModelSpec(name=name, api_key_env="JISI_TEST_MISSING_KEY" if name == "A" else None)
        for name in PATH_MODELS
    ]

    def factory(spec: ModelSpec) -> ScriptedChat:
        if spec.api_key_env:
            from jisi_graph.pool import openai_chat_model

            openai_chat_model(spec)  # raises: the variable is not set
        return models[spec.name]

    pool = Pool.from_models(specs, factory=factory)
    graph = build_graph(Resources(bank=bank, embedder=embedder, pool=pool))
    out = graph.invoke({"query": PATH_QUERIES["route"]}, context=PATH_CONTEXT)
    failure = out["decision"]["failures"]["A"]
    assert failure.startswith("config: environment variable JISI_TEST_MISSING_KEY")
    a_calls = [c for c in calls_of(out["decision"]) if c.model == "A"]
    assert a_calls[0].role == "probe"
    assert all(c.attempts == 0 and c.error_kind == "config" for c in a_calls)
    assert out["answer"]


# ------------------------------------------------------------------------------------------
# The method with its default knobs, hand-computed (section 3 of METHOD.md in full)
# ------------------------------------------------------------------------------------------

FULL_DIM = 5
FULL_SIMS = (0.9, 0.8, 0.6, 0.3)
FULL_SCORES = (
    {"A": 1.0, "B": 0.0, "C": 1.0, "D": 1.0},
    {"A": 0.0, "B": 1.0, "C": 0.0, "D": 0.5},
    {"A": 1.0, "B": 1.0, "C": 1.0, "D": 0.0},
    {"A": 1.0, "B": 1.0, "C": 0.0, "D": 0.0},
)
# each row's past answers (every model alike) against the probes' answers (all on axis 2)
FULL_PAST_ANSWERS = (
    unit(0, 0, 1, 0, 0),
    unit(0, 0, 0.6, 0.8, 0),
    unit(0, 0, 0, 1, 0),
    unit(0, 0, 0.8, 0.6, 0),
)
FULL_PAST_TOKENS = (10, 20, 30, 10)


@pytest.fixture(scope="module")
def full_bank() -> tuple[Bank, Embedder]:
    vectors: dict[str, list[float]] = {"Q-full": basis(0, FULL_DIM)}
    rows = []
    for j, (sim, scores) in enumerate(zip(FULL_SIMS, FULL_SCORES, strict=True)):
        query = f"bank row {j}"
        vectors[query] = unit(sim, (1 - sim * sim) ** 0.5, 0, 0, 0)
        answers = {m: f"past answer {j} of {m}" for m in scores}
        vectors.update({text: FULL_PAST_ANSWERS[j] for text in answers.values()})
        rows.append(
            make_row(
                query, scores, index=f"r{j}", answers=answers, completion_tokens=FULL_PAST_TOKENS[j]
            )
        )
    vectors.update({f"{m} answers": basis(2, FULL_DIM) for m in PATH_MODELS})
    embedder = fake_embedder(vectors, default=basis(4, FULL_DIM))
    return build_bank(rows, embedder, source=synthetic_source()), embedder


def run_full(full_bank: tuple[Bank, Embedder], **context: Any) -> dict[str, Any]:
    bank, embedder = full_bank
    pool = scripted_pool(scripted_models())
    graph = build_graph(Resources(bank=bank, embedder=embedder, pool=pool))
    out = graph.invoke({"query": "Q-full"}, context={"max_retries": 0, **context})
    check_accounting(out)
    return out


# Hand computation, default knobs (k = 50 > 4 rows: S is the whole bank):
#   sq = (.9, .8, .6, .3), sum 2.6
#   P: A = (.9 + .6 + .3) / 2.6, B = (.8 + .6 + .3) / 2.6, C = (.9 + .6) / 2.6,
#      D = (.9 + .5 x .8) / 2.6                     -> probes A, B, C
#   sr = (1, .6, 0, .8)  (probe answers on axis 2 against each row's past answers)
#   sl: D = |L^2 - 10^2| = (0, 300, 800, 0), sl = 1 - D / 800 = (1, .625, 0, 1)
#   smix = .5 sq + .5 (.6 sr + .4 sl) = (.95, .705, .3, .59);  F = top 2 = rows 0, 1
#   R: A = .95 / 1.655, B = .705 / 1.655, C = .95 / 1.655, D = (.95 + .5 x .705) / 1.655
#   candidates D, A, C (A before C on the tie); relative A = C = .95 / 1.3025 = .7294
#   G = (.75, .75, .5, .375);  A-score = .5 G + .5 P
FULL_P = {"A": 1.8 / 2.6, "B": 1.7 / 2.6, "C": 1.5 / 2.6, "D": 1.3 / 2.6}
FULL_R = {"A": 0.95 / 1.655, "B": 0.705 / 1.655, "C": 0.95 / 1.655, "D": 1.3025 / 1.655}
FULL_G = {"A": 0.75, "B": 0.75, "C": 0.5, "D": 0.375}


def test_default_knobs_hand_computed_route(full_bank: tuple[Bank, Embedder]) -> None:
    out = run_full(full_bank)
    decision = out["decision"]
    assert decision["support_size"] == 4
    assert [n["id"] for n in decision["neighbours"]] == ["r0", "r1", "r2", "r3"]
    assert [n["similarity"] for n in decision["neighbours"]] == pytest.approx(FULL_SIMS, abs=1e-6)
    assert decision["support_scores"] == pytest.approx(FULL_P, abs=1e-6)
    assert decision["probes"] == ["A", "B", "C"]
    assert decision["filtered_size"] == 2
    # past answers are stored as float16: a few 1e-4 of slack on R
    assert decision["routing_scores"] == pytest.approx(FULL_R, abs=1e-3)
    assert [c["model"] for c in decision["candidates"]] == ["D", "A", "C"]
    assert [c["probe"] for c in decision["candidates"]] == [False, True, True]
    assert [c["relative_score"] for c in decision["candidates"]] == pytest.approx(
        [1.0, 0.95 / 1.3025, 0.95 / 1.3025], abs=1e-3
    )
    assert decision["switch_n"] == 1
    assert decision["mode"] == "route"
    assert decision["answer_source"] == "D"
    assert out["answer"] == "D answers"
    assert roles(decision) == [("A", "probe"), ("B", "probe"), ("C", "probe"), ("D", "candidate")]
    expected_a = {m: 0.5 * FULL_G[m] + 0.5 * FULL_P[m] for m in FULL_P}
    assert decision["aggregator_scores"] == pytest.approx(expected_a, abs=1e-6)
    assert decision["aggregators"] == ["A", "B", "C"]


def test_default_knobs_hand_computed_aggregate(full_bank: tuple[Bank, Embedder]) -> None:
    out = run_full(full_bank, switch_threshold=0.7)
    decision = out["decision"]
    assert decision["switch_n"] == 3
    assert decision["aggregated"] == ["D", "A", "C"]
    assert decision["aggregator"] == "A"
    assert out["answer"] == "aggregated by A"
    assert roles(decision) == [
        ("A", "probe"),
        ("B", "probe"),
        ("C", "probe"),
        ("D", "candidate"),
        ("A", "aggregator"),
    ]


# ------------------------------------------------------------------------------------------
# 3. Cost: the sum of the query's calls, at the pool's prices
# ------------------------------------------------------------------------------------------


def test_cost_is_the_sum_of_probes_and_aggregator(path_bank: tuple[Bank, Embedder]) -> None:
    prices = {"A": (1.0, 2.0), "B": (3.0, 4.0), "C": (5.0, 6.0), "D": (7.0, 8.0)}
    out = run_path(path_bank, "agg2", scripted_models(), prices=prices)
    # probes: 100 in / 10 out each; aggregator A: 400 in / 20 out
    expected = {"A": 120e-6, "B": 340e-6, "C": 560e-6}
    calls = calls_of(out["decision"])
    for call in calls:
        if call.role == "probe":
            assert call.cost_usd == pytest.approx(expected[call.model], abs=1e-15)
        assert call.cost_source == "prices"
    assert out["cost_usd"] == pytest.approx((120 + 340 + 560 + 440) / 1e6, abs=1e-12)
    assert out["usage"] == {"input_tokens": 700, "output_tokens": 50, "calls": 4}


def test_failed_calls_cost_nothing(path_bank: tuple[Bank, Embedder]) -> None:
    prices = {name: (1.0, 1.0) for name in PATH_MODELS}
    models = scripted_models(B={"error": RuntimeError("down")})
    out = run_path(path_bank, "route", models, prices=prices)
    (failed,) = [c for c in calls_of(out["decision"]) if not c.ok]
    assert failed.model == "B" and failed.cost_usd == 0.0 and failed.input_tokens == 0


def test_a_second_question_starts_a_fresh_record(path_bank: tuple[Bank, Embedder]) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    bank, embedder = path_bank
    pool = scripted_pool(scripted_models())
    graph = build_graph(Resources(bank=bank, embedder=embedder, pool=pool))
    graph = graph.builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    first = graph.invoke({"query": PATH_QUERIES["agg2"]}, config, context=PATH_CONTEXT)
    second = graph.invoke({"query": PATH_QUERIES["route"]}, config, context=PATH_CONTEXT)
    assert len(first["decision"]["calls"]) == 4
    assert len(second["decision"]["calls"]) == 3
    assert second["decision"]["mode"] == "route"
    assert [m.type for m in second["messages"]] == ["human", "ai", "human", "ai"]


# ------------------------------------------------------------------------------------------
# 4. Failures over real HTTP (ChatOpenAI against a loopback stub)
# ------------------------------------------------------------------------------------------

HTTP_CONTEXT = {**PATH_CONTEXT, "timeout_s": 0.5, "max_retries": 1}


def http_pool(stub: OpenAIStub, behaviours: dict[str, str]) -> Pool:
    return Pool.from_models(
        [
            ModelSpec(
                name=name,
                model=f"{name}-{behaviours.get(name, 'ok')}",
                base_url=stub.base_url,
                input_price=1.0,
                output_price=2.0,
            )
            for name in PATH_MODELS
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [("slow", "timeout"), ("error500", "server_error"), ("empty", "empty")],
)
def test_http_failing_probe_is_retried_then_recorded(
    path_bank: tuple[Bank, Embedder], openai_stub: OpenAIStub, behaviour: str, kind: str
) -> None:
    bank, embedder = path_bank
    pool = http_pool(openai_stub, {"A": behaviour})
    graph = build_graph(Resources(bank=bank, embedder=embedder, pool=pool))
    started = time.perf_counter()
    out = graph.invoke({"query": PATH_QUERIES["agg3"]}, context=HTTP_CONTEXT)
    elapsed = time.perf_counter() - started
    decision = out["decision"]
    check_accounting(out)

    # A: one attempt and one retry, then a failure of its kind.
    assert openai_stub.requests[f"A-{behaviour}"] == 2
    (failed,) = [c for c in calls_of(decision) if c.model == "A"]
    assert (failed.ok, failed.error_kind, failed.attempts) == (False, kind, 2)
    assert decision["failures"]["A"].startswith(f"{kind}: ")
    if kind == "timeout":  # two 0.5 s attempts and a 0.5 s pause, not the stub's 2 s sleep
        assert failed.latency_s < 1.9

    # The others answer: R over B (.85), C (.8), D (.1); D is called; B and C aggregated by C.
    assert [c["model"] for c in decision["candidates"]] == ["B", "C", "D"]
    assert ("D", "candidate") in roles(decision)
    assert decision["aggregated"] == ["B", "C"]
    assert decision["aggregator"] == "C"
    assert out["answer"] == "aggregate by C-ok"
    assert out["error"] is None
    for name in "BCD":
        assert openai_stub.requests[f"{name}-ok"] == (2 if name == "C" else 1)
    # prices 1 / 2 per million: 120 in and 30 out per answer
    assert out["cost_usd"] == pytest.approx(4 * (120 + 60) / 1e6, abs=1e-12)
    assert elapsed < 10


@pytest.mark.slow
def test_http_every_model_failing_gives_an_error_naming_each(
    path_bank: tuple[Bank, Embedder], openai_stub: OpenAIStub
) -> None:
    bank, embedder = path_bank
    behaviours = {"A": "slow", "B": "error500", "C": "empty", "D": "error500"}
    pool = http_pool(openai_stub, behaviours)
    graph = build_graph(Resources(bank=bank, embedder=embedder, pool=pool))
    started = time.perf_counter()
    out = graph.invoke({"query": PATH_QUERIES["agg3"]}, context=HTTP_CONTEXT)
    elapsed = time.perf_counter() - started
    assert out["answer"] == ""
    assert out["decision"]["mode"] == "error"
    error = out["error"]
    assert error.startswith("no model answered")
    assert "A: timeout" in error
    assert "B: server_error: HTTP 500" in error
    assert "C: empty" in error
    assert "D: server_error: HTTP 500" in error
    assert dict(openai_stub.requests) == {f"{m}-{b}": 2 for m, b in behaviours.items()}
    assert out["cost_usd"] == 0.0
    # probes in parallel (<= 1.5 s), then D (<= 1.5 s): bounded well below the stub's sleeps
    assert elapsed < 6
