import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from conftest import SHARED_DATA

from jisi_graph.bank.loaders import (
    file_sha256,
    iter_rows,
    load_hub_rows,
    load_rows,
    parse_hf_uri,
)
from jisi_graph.bank.schema import BankFormatError


def make_row(i: int = 0, split: str | None = "train", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "query": f"question {i}",
        "dataset": "toy",
        "index": i,
        "split": split,
        "records": {"model-a": 1.0, "model-b": 0.0},
        "usages": {
            "model-a": {"prompt_tokens": 10, "completion_tokens": 4, "cost": 0.002},
            "model-b": {"prompt_tokens": 10, "completion_tokens": 8, "cost": 0.001},
        },
        "raw_output": {"model-a": f"answer a{i}", "model-b": f"answer b{i}"},
        "gt": str(i),
    }
    row.update(overrides)
    return row


def write_lines(path: Path, lines: list[Any], *, gz: bool = False) -> Path:
    """Write rows (dicts are dumped as JSON, strings written as they are) one per line."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def load_error(source: Path | str, **kwargs: Any) -> BankFormatError:
    with pytest.raises(BankFormatError) as info:
        load_rows(source, **kwargs)
    return info.value


# --- single files: line-level errors -------------------------------------------------------------


def test_line_that_is_not_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [make_row(0), "{not json", make_row(2)])
    err = load_error(path)
    assert (err.path, err.line, err.field) == (str(path), 2, None)
    assert str(err).startswith(f"{path}, line 2: line is not valid JSON (")
    assert "column 2" in str(err)


def test_line_that_is_json_but_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "list.jsonl", [make_row(0), make_row(1), "[1, 2]"])
    err = load_error(path)
    assert str(err) == f"{path}, line 3: row must be a JSON object, got list"
    path = write_lines(tmp_path / "null.jsonl", [make_row(0), "null"])
    assert str(load_error(path)) == f"{path}, line 2: row must be a JSON object, got null"


def test_missing_query_names_file_line_and_field(tmp_path: Path) -> None:
    row = make_row(1)
    del row["query"]
    path = write_lines(tmp_path / "q.jsonl", [make_row(0), row])
    err = load_error(path)
    assert str(err) == f"{path}, line 2, field 'query': required field is missing"


def test_empty_query(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [make_row(0, query="  ")])
    assert str(load_error(path)) == f"{path}, line 1, field 'query': query is empty"


def test_blank_lines_count_in_line_numbers(tmp_path: Path) -> None:
    bad = make_row(1, records={"model-a": 1.5, "model-b": 0.0})
    path = write_lines(tmp_path / "s.jsonl.gz", [make_row(0), "", "   ", bad], gz=True)
    err = load_error(path)
    assert str(err) == f"{path}, line 4, field 'records.model-a': score 1.5 is outside [0, 1]"


@pytest.mark.parametrize(
    ("score_json", "reason"),
    [
        ('"1"', "score must be a number, got '1'"),
        ("true", "score must be a number, not a bool (True)"),
        ("NaN", "score nan is not a finite number"),
        ("-1", "score -1 is outside [0, 1]"),
    ],
)
def test_bad_score_in_file(tmp_path: Path, score_json: str, reason: str) -> None:
    line = '{"query": "q", "records": {"model-a": 1.0, "model-b": ' + score_json + "}}"
    path = write_lines(tmp_path / "s.jsonl", [make_row(0), line])
    assert str(load_error(path)) == f"{path}, line 2, field 'records.model-b': {reason}"


def test_usage_and_answer_without_score(tmp_path: Path) -> None:
    row = make_row(0, records={"model-a": 1.0})
    path = write_lines(tmp_path / "u.jsonl", [row])
    assert str(load_error(path)) == (
        f"{path}, line 1, field 'usages.model-b': "
        "model 'model-b' has an entry in usages but no score in records"
    )
    row = make_row(0, records={"model-a": 1.0}, usages={})
    path = write_lines(tmp_path / "r.jsonl", [make_row(1), row])
    assert str(load_error(path)) == (
        f"{path}, line 2, field 'raw_output.model-b': "
        "model 'model-b' has an entry in raw_output but no score in records"
    )


def test_negative_token_count(tmp_path: Path) -> None:
    row = make_row(0, usages={"model-a": {"prompt_tokens": 3, "completion_tokens": -2}})
    path = write_lines(tmp_path / "t.jsonl", [row])
    err = load_error(path)
    assert str(err) == (
        f"{path}, line 1, field 'usages.model-a.completion_tokens': token count -2 is negative"
    )


def test_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    good = json.dumps(make_row(0)).encode()
    path.write_bytes(good + b"\n" + b'{"query": "caf\xe9", "records": {"m": 1}}\n')
    err = load_error(path)
    assert str(err) == f"{path}, line 2: line is not valid UTF-8 (byte 0xe9 at column 15)"


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    body = json.dumps(make_row(0)) + "\r\n" + json.dumps(make_row(1)) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [r.query for r in load_rows(path)] == ["question 0", "question 1"]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"])
def test_empty_or_blank_file(tmp_path: Path, content: str, gz: bool) -> None:
    path = tmp_path / ("empty.jsonl.gz" if gz else "empty.jsonl")
    path.write_bytes(gzip.compress(content.encode()) if gz else content.encode())
    err = load_error(path)
    assert str(err) == f"{path}: file holds no rows (it is empty or only blank lines)"
    assert err.line is None
    with pytest.raises(BankFormatError, match="file holds no rows"):
        list(iter_rows(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="bank source not found: .*nope.jsonl"):
        load_rows(path)
    with pytest.raises(FileNotFoundError, match="bank file not found: .*nope.jsonl"):
        list(iter_rows(path))


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(("\n".join(json.dumps(make_row(i)) for i in range(50)) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    err = load_error(path)
    assert err.path == str(path)
    assert err.line is not None and err.line >= 1
    assert err.reason.startswith("cannot read the file, is the compressed data cut or corrupt?")


def test_iter_rows_is_lazy(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "lazy.jsonl", [make_row(0), "oops"])
    rows = iter_rows(path)
    assert next(rows).query == "question 0"
    with pytest.raises(BankFormatError, match="line 2"):
        next(rows)


# --- gzip and plain ------------------------------------------------------------------------------


def test_gzip_and_plain_give_identical_rows(tmp_path: Path) -> None:
    rows = [make_row(i, split="test" if i % 3 == 0 else "train") for i in range(10)]
    plain = write_lines(tmp_path / "b.jsonl", rows)
    packed = write_lines(tmp_path / "b.jsonl.gz", rows, gz=True)
    a, b = load_rows(plain), load_rows(packed)
    assert len(a) == 10
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]
    assert a[3].usages["model-b"].completion_tokens == 8


def test_gzip_is_detected_by_magic_bytes_not_suffix(tmp_path: Path) -> None:
    packed = write_lines(tmp_path / "really_gzip.jsonl", [make_row(0)], gz=True)
    plain = write_lines(tmp_path / "really_plain.jsonl.gz", [make_row(0)])
    assert load_rows(packed)[0].query == load_rows(plain)[0].query == "question 0"


# --- filters and collection checks --------------------------------------------------------------


def test_row_missing_one_model_loads(tmp_path: Path) -> None:
    partial = make_row(1, records={"model-a": 0.0}, usages={}, raw_output={"model-a": "x"})
    path = write_lines(tmp_path / "p.jsonl", [make_row(0), partial, make_row(2)])
    rows = load_rows(path)
    assert [sorted(r.records) for r in rows] == [
        ["model-a", "model-b"],
        ["model-a"],
        ["model-a", "model-b"],
    ]
    assert "model-b" not in rows[1].raw_output
    assert rows[1].usages == {}


def test_model_that_answers_in_no_row(tmp_path: Path) -> None:
    rows = [make_row(i, raw_output={"model-a": "x"}) for i in range(3)]
    path = write_lines(tmp_path / "silent.jsonl", rows)
    err = load_error(path)
    assert str(err) == (
        f"{path}: model 'model-b' answers in no row (scored in 3 rows, raw_output in none)"
    )
    assert err.path == str(path)


def test_model_filter_keeps_only_requested_models(tmp_path: Path) -> None:
    rows = [make_row(i, agg_records={"model-a": 0.5, "model-b": 1.0}) for i in range(3)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    loaded = load_rows(path, models=["model-b"])
    assert len(loaded) == 3
    for row in loaded:
        assert row.records == {"model-b": 0.0}
        assert set(row.usages) == {"model-b"}
        assert row.raw_output == {"model-b": f"answer b{row.index}"}
        assert row.agg_records == {"model-b": 1.0}


def test_model_filter_also_rescues_a_silent_model(tmp_path: Path) -> None:
    rows = [make_row(i, raw_output={"model-a": "x"}) for i in range(2)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    assert [r.records for r in load_rows(path, models=["model-a"])] == [{"model-a": 1.0}] * 2


def test_requested_model_absent_from_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [make_row(0), make_row(1)])
    err = load_error(path, models=["model-a", "model-z"])
    assert str(err) == (
        f"{path}: requested model 'model-z' appears in no row; models present: model-a, model-b"
    )
    err = load_error(path, split="train", models=["x", "y"])
    assert err.reason.startswith("requested model 'x' appears in no row of split 'train' (and 1")


def test_row_left_without_scores_by_the_model_filter(tmp_path: Path) -> None:
    only_b = make_row(1, records={"model-b": 1.0}, usages={}, raw_output={"model-b": "y"})
    path = write_lines(tmp_path / "f.jsonl", [make_row(0), only_b])
    err = load_error(path, models=["model-a"])
    assert (
        str(err) == f"{path}, line 2, field 'records': no score for any requested model (model-a)"
    )


def test_split_filter_and_null_split_counts_as_train(tmp_path: Path) -> None:
    rows = [make_row(0), make_row(1, split=None), make_row(2, split="test"), make_row(3)]
    path = write_lines(tmp_path / "s.jsonl", rows)
    assert [r.index for r in load_rows(path, split="train")] == [0, 1, 3]
    assert [r.index for r in load_rows(path, split="test")] == [2]
    assert [r.index for r in load_rows(path)] == [0, 1, 2, 3]
    assert load_rows(path, split="train")[1].split is None


def test_split_that_does_not_exist(tmp_path: Path) -> None:
    rows = [make_row(0), make_row(1, split=None), make_row(2, split="test")]
    path = write_lines(tmp_path / "s.jsonl", rows)
    err = load_error(path, split="dev")
    assert (
        str(err)
        == f"{path}: no row has split 'dev'; splits present: 'test' (1 row), 'train' (2 rows)"
    )


def test_limit_applies_after_split_filter(tmp_path: Path) -> None:
    rows = [make_row(i, split="test" if i % 2 else "train") for i in range(10)]
    path = write_lines(tmp_path / "l.jsonl", rows)
    assert [r.index for r in load_rows(path, split="train", limit=3)] == [0, 2, 4]
    assert [r.index for r in load_rows(path, limit=3)] == [0, 1, 2]
    assert len(load_rows(path, limit=100)) == 10
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_rows(path, limit=0)
    with pytest.raises(ValueError, match="models must name at least one model"):
        load_rows(path, models=[])
    with pytest.raises(TypeError, match="not the string 'model-a'"):
        load_rows(path, models="model-a")
    assert [r.records for r in load_rows(path, models=("model-a", "model-a"), limit=1)] == [
        {"model-a": 1.0}
    ]


# --- directories ---------------------------------------------------------------------------------


def test_directory_loads_jsonl_files_in_sorted_order(tmp_path: Path) -> None:
    write_lines(tmp_path / "b.jsonl.gz", [make_row(2), make_row(3)], gz=True)
    write_lines(tmp_path / "a.jsonl", [make_row(0), make_row(1)])
    (tmp_path / "notes.txt").write_text("not a bank file")
    (tmp_path / "sub").mkdir()
    write_lines(tmp_path / "sub" / "c.jsonl", [make_row(9)])
    rows = load_rows(tmp_path)
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert [r.index for r in load_rows(str(tmp_path), limit=3)] == [0, 1, 2]


def test_directory_error_names_the_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", [make_row(0)])
    bad = write_lines(tmp_path / "b.jsonl", [make_row(1), make_row(2, query="")])
    err = load_error(tmp_path)
    assert str(err) == f"{bad}, line 2, field 'query': query is empty"


def test_directory_checks_span_all_files(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", [make_row(0, raw_output={"model-a": "x"})])
    write_lines(tmp_path / "b.jsonl", [make_row(1, raw_output={"model-a": "y"})])
    err = load_error(tmp_path)
    assert str(err) == (
        f"{tmp_path}: model 'model-b' answers in no row (scored in 2 rows, raw_output in none)"
    )


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x")
    assert str(load_error(tmp_path)) == f"{tmp_path}: directory holds no .jsonl or .jsonl.gz files"


# --- Hugging Face Hub (monkeypatched, never the network) ----------------------------------------


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Serve a local snapshot in place of the Hub and record every call's arguments."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "snapshot"
    (snapshot / "data").mkdir(parents=True)
    write_lines(snapshot / "data" / "train.jsonl.gz", [make_row(0), make_row(1)], gz=True)
    write_lines(snapshot / "data" / "extra.jsonl", [make_row(2, split="test")])
    (snapshot / "README.md").write_text("card")
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hf_uri_loads_the_whole_dataset(fake_hub: list[dict[str, Any]]) -> None:
    rows = load_rows("hf://owner/bank-data")
    assert [r.index for r in rows] == [2, 0, 1]  # data/extra.jsonl sorts before data/train...
    assert len(fake_hub) == 1
    call = fake_hub[0]
    assert call["repo_id"] == "owner/bank-data"
    assert call["repo_type"] == "dataset"
    assert call["revision"] is None
    assert call["allow_patterns"] == ["*.jsonl", "*.jsonl.gz"]
    assert [r.index for r in load_rows("hf://owner/bank-data", split="train")] == [0, 1]


def test_hf_uri_with_a_path_in_repo(fake_hub: list[dict[str, Any]]) -> None:
    rows = load_rows("hf://owner/bank-data@v1/data/train.jsonl.gz", models=["model-a"])
    assert [r.records for r in rows] == [{"model-a": 1.0}] * 2
    assert fake_hub[0]["allow_patterns"] == ["data/train.jsonl.gz"]
    assert fake_hub[0]["revision"] == "v1"


def test_hub_errors_name_the_hub_file(fake_hub: list[dict[str, Any]]) -> None:
    err = load_error("hf://owner/bank-data/data/train.jsonl.gz", split="dev")
    assert str(err) == (
        "hf://owner/bank-data/data/train.jsonl.gz: no row has split 'dev'; "
        "splits present: 'train' (2 rows)"
    )
    with pytest.raises(FileNotFoundError, match="hf://owner/bank-data/data/nope.jsonl"):
        load_hub_rows("owner/bank-data", "data/nope.jsonl")


def test_hub_bad_row_names_the_file_in_the_repo(
    fake_hub: list[dict[str, Any]], tmp_path: Path
) -> None:
    write_lines(tmp_path / "snapshot" / "data" / "extra.jsonl", [make_row(5, query="")])
    err = load_error("hf://owner/bank-data")
    assert (
        str(err) == "hf://owner/bank-data/data/extra.jsonl, line 1, field 'query': query is empty"
    )


def test_parse_hf_uri() -> None:
    assert parse_hf_uri("hf://o/n") == ("o/n", None, None)
    assert parse_hf_uri("hf://o/n/a/b.jsonl.gz") == ("o/n", "a/b.jsonl.gz", None)
    assert parse_hf_uri("hf://o/n@main/x.jsonl") == ("o/n", "x.jsonl", "main")
    for bad in ["hf://owner", "hf://", "hf:///name", "owner/name"]:
        with pytest.raises(ValueError, match="not a Hub dataset id"):
            parse_hf_uri(bad)


# --- helpers -------------------------------------------------------------------------------------


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(str(path), chunk_size=1000) == expected


# --- the real shared data ------------------------------------------------------------------------


def real_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data file {name} not found at {path}")
    return path


def test_real_zeroeval_train_split() -> None:
    rows = load_rows(real_file("zeroeval_gsm8k_math.jsonl.gz"), split="train")
    assert len(rows) == 1427
    models = {m for r in rows for m in r.records}
    assert len(models) == 26
    assert {"gpt-4o-2024-05-13", "o1-mini-2024-09-12"} <= models
    assert {r.dataset for r in rows} == {"gsm", "math-l5"}
    assert all(r.split == "train" for r in rows)
    assert all(len(r.records) == 26 for r in rows)
    assert all(set(r.records.values()) <= {0.0, 1.0} for r in rows)


def test_real_routerbench_train_split() -> None:
    rows = load_rows(real_file("routerbench_subset.jsonl.gz"), split="train")
    assert len(rows) == 2213
    assert len({m for r in rows for m in r.records}) == 11
    assert {r.dataset for r in rows} == {"arc-challenge", "winogrande", "mbpp"}
    assert all(r.gt is None for r in rows)
