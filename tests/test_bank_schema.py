import pickle
from typing import Any

import pytest
from pydantic import ValidationError

from jisi_graph.bank.schema import BankFormatError, BankRow, Usage, validate_row


def make_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "query": "What is 2 + 2?",
        "dataset": "toy",
        "index": 7,
        "split": "train",
        "records": {"model-a": 1.0, "model-b": 0.0},
        "usages": {
            "model-a": {"prompt_tokens": 12, "completion_tokens": 5, "cost": 0.001},
            "model-b": {"prompt_tokens": 12, "completion_tokens": 9, "cost": 0.0},
        },
        "raw_output": {"model-a": "4", "model-b": "5"},
        "gt": "4",
    }
    row.update(overrides)
    return row


def error_for(data: Any) -> BankFormatError:
    with pytest.raises(BankFormatError) as info:
        validate_row(data, path="data.jsonl.gz", line=17)
    return info.value


def test_valid_row_keeps_values_and_ignores_extra_fields() -> None:
    row = validate_row(make_row(extra_field={"anything": 1}, records={"model-a": 1, "model-b": 0}))
    assert row.query == "What is 2 + 2?"
    assert row.dataset == "toy"
    assert row.index == 7
    assert row.split == "train"
    assert row.records == {"model-a": 1.0, "model-b": 0.0}
    assert all(type(v) is float for v in row.records.values())
    assert row.usages["model-a"] == Usage(prompt_tokens=12, completion_tokens=5, cost=0.001)
    assert row.raw_output == {"model-a": "4", "model-b": "5"}
    assert row.gt == "4"
    assert row.agg_records is None
    assert not hasattr(row, "extra_field")


def test_defaults_for_optional_fields() -> None:
    row = validate_row({"query": "q", "records": {"m": 0.5}})
    assert row.dataset == "default"
    assert row.index is None
    assert row.split is None
    assert row.usages == {}
    assert row.raw_output == {}
    assert row.gt is None
    assert row.agg_records is None
    assert Usage() == Usage(prompt_tokens=0, completion_tokens=0, cost=None)


def test_index_may_be_string_or_int_but_not_bool() -> None:
    assert validate_row(make_row(index="gsm-12")).index == "gsm-12"
    assert validate_row(make_row(index=3)).index == 3
    err = error_for(make_row(index=True))
    assert err.field == "index"
    assert err.reason == "index must be a string, an integer or null, got True"


def test_error_message_format_for_score_out_of_range() -> None:
    err = error_for(make_row(records={"model-a": 1.5, "model-b": 0.0}))
    assert (
        str(err) == "data.jsonl.gz, line 17, field 'records.model-a': score 1.5 is outside [0, 1]"
    )
    assert (err.path, err.line, err.field) == ("data.jsonl.gz", 17, "records.model-a")
    assert err.reason == "score 1.5 is outside [0, 1]"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("score", "reason"),
    [
        (-0.25, "score -0.25 is outside [0, 1]"),
        (2, "score 2 is outside [0, 1]"),
        ("0.5", "score must be a number, got '0.5'"),
        (True, "score must be a number, not a bool (True)"),
        (False, "score must be a number, not a bool (False)"),
        (float("nan"), "score nan is not a finite number"),
        (float("inf"), "score inf is not a finite number"),
        (None, "score must be a number, got None"),
    ],
)
def test_bad_scores(score: Any, reason: str) -> None:
    err = error_for(make_row(records={"model-a": 1.0, "model-b": score}))
    assert str(err) == f"data.jsonl.gz, line 17, field 'records.model-b': {reason}"


def test_agg_records_follow_the_score_rule() -> None:
    ok = validate_row(make_row(agg_records={"model-a": 0.5}))
    assert ok.agg_records == {"model-a": 0.5}
    err = error_for(make_row(agg_records={"model-a": 7}))
    assert (
        str(err) == "data.jsonl.gz, line 17, field 'agg_records.model-a': score 7 is outside [0, 1]"
    )


def test_missing_query() -> None:
    data = make_row()
    del data["query"]
    err = error_for(data)
    assert str(err) == "data.jsonl.gz, line 17, field 'query': required field is missing"


def test_query_with_an_unpaired_surrogate() -> None:
    err = error_for(make_row(query="ab\udc00"))
    assert str(err) == (
        "data.jsonl.gz, line 17, field 'query': query is not valid Unicode text: an unpaired "
        "surrogate at character 2"
    )


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query(query: str) -> None:
    err = error_for(make_row(query=query))
    assert str(err) == "data.jsonl.gz, line 17, field 'query': query is empty"


def test_query_must_be_a_string() -> None:
    err = error_for(make_row(query=12))
    assert str(err) == "data.jsonl.gz, line 17, field 'query': query must be a string, got 12"


def test_missing_and_empty_records() -> None:
    data = make_row()
    del data["records"]
    assert str(error_for(data)).endswith("field 'records': required field is missing")
    err = error_for(make_row(records={}, usages={}, raw_output={}))
    assert (
        str(err)
        == "data.jsonl.gz, line 17, field 'records': records is empty: no model has a score"
    )


def test_usage_for_a_model_without_score() -> None:
    usages = make_row()["usages"] | {"model-c": {"prompt_tokens": 1, "completion_tokens": 1}}
    err = error_for(make_row(usages=usages))
    assert str(err) == (
        "data.jsonl.gz, line 17, field 'usages.model-c': "
        "model 'model-c' has an entry in usages but no score in records"
    )


def test_raw_output_for_a_model_without_score() -> None:
    err = error_for(make_row(raw_output={"model-a": "4", "model-x": "3"}))
    assert str(err) == (
        "data.jsonl.gz, line 17, field 'raw_output.model-x': "
        "model 'model-x' has an entry in raw_output but no score in records"
    )


def test_raw_output_values_must_be_strings() -> None:
    err = error_for(make_row(raw_output={"model-a": 4}))
    assert err.field == "raw_output.model-a"
    assert err.reason == "Input should be a valid string, got 4"


@pytest.mark.parametrize(
    ("usage", "field", "reason"),
    [
        ({"completion_tokens": -5}, "completion_tokens", "token count -5 is negative"),
        ({"prompt_tokens": -1}, "prompt_tokens", "token count -1 is negative"),
        ({"prompt_tokens": True}, "prompt_tokens", "token count must be an integer, got True"),
        ({"prompt_tokens": 3.0}, "prompt_tokens", "token count must be an integer, got 3.0"),
        (
            {"completion_tokens": "9"},
            "completion_tokens",
            "token count must be an integer, got '9'",
        ),
        ({"cost": -0.5}, "cost", "cost -0.5 is negative"),
        ({"cost": float("nan")}, "cost", "cost nan is not a finite number"),
        ({"cost": "0.1"}, "cost", "cost must be a number or null, got '0.1'"),
        ({"cost": False}, "cost", "cost must be a number or null, got False"),
    ],
)
def test_bad_usage_values(usage: dict[str, Any], field: str, reason: str) -> None:
    err = error_for(make_row(usages={"model-a": usage}))
    assert str(err) == f"data.jsonl.gz, line 17, field 'usages.model-a.{field}': {reason}"


def test_usage_accepts_null_or_int_cost_and_ignores_extra_keys() -> None:
    row = validate_row(make_row(usages={"model-a": {"cost": None}, "model-b": {"cost": 0, "x": 1}}))
    assert row.usages["model-a"] == Usage(prompt_tokens=0, completion_tokens=0, cost=None)
    assert row.usages["model-b"].cost == 0.0


def test_several_errors_report_the_first_and_count_the_rest() -> None:
    err = error_for(make_row(query="", records={"model-a": 3, "model-b": "x"}))
    assert str(err) == (
        "data.jsonl.gz, line 17, field 'query': query is empty (and 2 more errors in this row)"
    )
    err = error_for(make_row(query="", records={"model-a": 3, "model-b": 1}))
    assert err.reason == "query is empty (and 1 more error in this row)"


@pytest.mark.parametrize(("data", "kind"), [([1, 2], "list"), ("row", "str"), (None, "null")])
def test_row_must_be_an_object(data: Any, kind: str) -> None:
    err = error_for(data)
    assert str(err) == f"data.jsonl.gz, line 17: row must be a JSON object, got {kind}"
    assert err.field is None


def test_error_string_omits_unknown_parts_and_pickles() -> None:
    assert str(BankFormatError("bad")) == "bad"
    assert str(BankFormatError("bad", path="f.jsonl")) == "f.jsonl: bad"
    assert str(BankFormatError("bad", line=3, field="query")) == "line 3, field 'query': bad"
    err = BankFormatError("bad", path="f.jsonl", line=2, field="records.m")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.reason, copy.path, copy.line, copy.field) == ("bad", "f.jsonl", 2, "records.m")
    assert str(copy) == str(err) == "f.jsonl, line 2, field 'records.m': bad"


def test_direct_construction_still_validates() -> None:
    with pytest.raises(ValidationError, match="score 1.5 is outside"):
        BankRow(query="q", records={"m": 1.5})
    with pytest.raises(ValidationError) as info:
        BankRow(query="q", records={"m": 1.0}, raw_output={"n": "x"})
    converted = BankFormatError.from_validation_error(info.value, path="p.jsonl", line=1)
    assert converted.field == "raw_output.n"


def test_long_inputs_are_cut_in_messages() -> None:
    err = error_for(make_row(records={"model-a": "x" * 10_000, "model-b": 0.0}))
    assert len(str(err)) < 200
    assert err.reason.endswith("...")
