"""The bank on disk: round trip, refusals, atomic writes, neighbour search, and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REAL_MODELS,
    ScriptedChat,
    basis,
    fake_embedder,
    make_row,
    scripted_pool,
    synthetic_source,
    unit,
)
from typer.testing import CliRunner

from jisi_graph import embedding
from jisi_graph.bank import store
from jisi_graph.bank.build import BankExistsError, build_bank, write_bank
from jisi_graph.bank.manifest import FORMAT_VERSION, MANIFEST_NAME, BankMismatchError
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import ARRAY_FILES, Bank
from jisi_graph.cli import app
from jisi_graph.embedding import Embedder
from jisi_graph.resources import Resources

DIM = 4
NAN = float("nan")


def round_trip_rows() -> list[BankRow]:
    return [
        make_row(
            "what is 1 + 1?",
            {"a": 1.0, "b": 0.0},
            dataset="arith",
            index=7,
            completion_tokens={"a": 12, "b": 40},
            costs={"a": 0.001, "b": None},
        ),
        # model b is missing from this row: NaN everywhere, no answer
        make_row(
            "name a colour",
            {"a": 0.5},
            dataset="chat",
            completion_tokens=30,
            costs={"a": 0.002},
        ),
        make_row("what is 2 + 2?", {"a": 0.0, "b": 1.0}, dataset="arith", index="x-3"),
    ]


def round_trip_embedder() -> Embedder:
    vectors = {
        "what is 1 + 1?": unit(1, 1, 0, 0),
        "name a colour": basis(2, DIM),
        "what is 2 + 2?": unit(1, 0.9, 0, 0.1),
    }
    return fake_embedder(vectors, default=unit(0, 0, 1, 1))


@pytest.fixture
def small_bank() -> Bank:
    return build_bank(round_trip_rows(), round_trip_embedder(), source=synthetic_source())


@pytest.fixture
def small_bank_dir(small_bank: Bank, tmp_path: Path) -> Path:
    return write_bank(small_bank, tmp_path / "bank")


# ------------------------------------------------------------------------------------------
# Round trip
# ------------------------------------------------------------------------------------------


def test_build_write_load_round_trip(small_bank: Bank, small_bank_dir: Path) -> None:
    loaded = Bank.load(small_bank_dir)
    assert loaded.path == small_bank_dir
    assert loaded.models == ["a", "b"]
    assert loaded.datasets == ["arith", "chat"]
    assert loaded.ids == ["7", "chat#1", "x-3"]
    assert loaded.queries == ["what is 1 + 1?", "name a colour", "what is 2 + 2?"]
    for name in ARRAY_FILES:
        expected, got = getattr(small_bank, name), getattr(loaded, name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    np.testing.assert_array_equal(loaded.query_embeddings, small_bank.query_embeddings)
    assert loaded.manifest == small_bank.manifest
    assert loaded.agg_scores is None

    # the values themselves, NaN where a model has no record
    np.testing.assert_array_equal(loaded.scores, [[1.0, 0.0], [0.5, NAN], [0.0, 1.0]])
    np.testing.assert_array_equal(loaded.completion_tokens, [[12, 40], [30, NAN], [10, 10]])
    np.testing.assert_array_equal(loaded.prompt_tokens, [[50, 50], [50, NAN], [50, 50]])
    np.testing.assert_array_equal(loaded.costs, [[0.001, NAN], [0.002, NAN], [NAN, NAN]])
    np.testing.assert_array_equal(loaded.answered, [[True, True], [True, False], [True, True]])
    np.testing.assert_array_equal(loaded.answer_embeddings[1, 1], np.zeros(DIM))
    np.testing.assert_allclose(loaded.answer_embeddings[0, 0], unit(0, 0, 1, 1), atol=1e-3)
    np.testing.assert_array_equal(loaded.dataset_ids, [0, 1, 0])
    np.testing.assert_allclose(loaded.query_embeddings[1], basis(2, DIM))
    np.testing.assert_allclose(np.linalg.norm(loaded.query_embeddings, axis=1), 1.0, atol=1e-6)
    assert loaded.comprehensive_ability() == pytest.approx([0.5, 0.5])

    manifest = loaded.manifest
    assert (manifest.rows, manifest.answers, manifest.format_version) == (3, 5, FORMAT_VERSION)
    assert manifest.embedder.id == "test:fake-embeddings" and manifest.embedder.dim == DIM
    # 3 queries + 5 answers, all distinct
    assert manifest.distinct_texts == 8
    assert set(manifest.files) >= {*ARRAY_FILES.values(), store.INDEX_FILE, store.ROWS_FILE}


def test_agg_records_round_trip_and_feed_g(tmp_path: Path) -> None:
    rows = [
        make_row("q1", {"a": 1.0, "b": 0.0}, agg_records={"a": 0.0, "b": 1.0}),
        make_row("q2", {"a": 1.0, "b": 0.0}, agg_records={"b": 1.0}),
    ]
    bank = build_bank(rows, round_trip_embedder(), source=synthetic_source())
    loaded = Bank.load(write_bank(bank, tmp_path / "bank"))
    assert loaded.manifest.has_agg_records
    assert loaded.agg_scores is not None
    np.testing.assert_array_equal(loaded.agg_scores, [[0.0, 1.0], [NAN, 1.0]])
    # G: the mean aggregation score where recorded (a: 0 over one row; b: 1)
    assert loaded.comprehensive_ability() == pytest.approx([0.0, 1.0])


# ------------------------------------------------------------------------------------------
# Load refuses what it cannot trust
# ------------------------------------------------------------------------------------------


def test_load_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BankMismatchError, match="not a directory"):
        Bank.load(tmp_path / "absent")


def test_load_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(BankMismatchError, match="manifest.json is missing"):
        Bank.load(tmp_path)


def test_load_refuses_a_missing_file(small_bank_dir: Path) -> None:
    (small_bank_dir / "scores.npy").unlink()
    with pytest.raises(BankMismatchError, match="file scores.npy is missing"):
        Bank.load(small_bank_dir)


@pytest.mark.parametrize("name", ["scores.npy", "index.faiss", "rows.jsonl"])
def test_load_refuses_an_altered_file(small_bank_dir: Path, name: str) -> None:
    path = small_bank_dir / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last byte
    path.write_bytes(bytes(data))
    with pytest.raises(BankMismatchError, match=f"file {name} does not match its manifest"):
        Bank.load(small_bank_dir)


def test_load_refuses_a_truncated_file(small_bank_dir: Path) -> None:
    path = small_bank_dir / "answer_embeddings.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(BankMismatchError, match="altered or truncated"):
        Bank.load(small_bank_dir)


def test_load_without_verify_skips_checksums(small_bank_dir: Path) -> None:
    path = small_bank_dir / "rows.jsonl"
    path.write_text(path.read_text().replace("colour", "color"))
    assert Bank.load(small_bank_dir, verify=False).queries[1] == "name a color"
    with pytest.raises(BankMismatchError, match="rows.jsonl does not match"):
        Bank.load(small_bank_dir)


def test_load_refuses_another_embedder(small_bank_dir: Path) -> None:
    assert Bank.load(small_bank_dir, embedder_id="test:fake-embeddings").size == 3
    with pytest.raises(BankMismatchError) as caught:
        Bank.load(small_bank_dir, embedder_id="sentence-transformers/all-MiniLM-L6-v2")
    message = str(caught.value)
    assert "'test:fake-embeddings'" in message
    assert "'sentence-transformers/all-MiniLM-L6-v2'" in message


def test_resources_refuse_another_embedder(small_bank_dir: Path) -> None:
    bank = Bank.load(small_bank_dir)
    pool = scripted_pool({"a": ScriptedChat(model_name="a")})
    other = fake_embedder({}, default=basis(0, DIM), embedder_id="other-embedder")
    with pytest.raises(BankMismatchError, match="not 'other-embedder'"):
        Resources(bank=bank, embedder=other, pool=pool)
    wider = fake_embedder({}, default=basis(0, DIM + 1))  # same id, another dimension
    with pytest.raises(BankMismatchError, match=r"\(dimension 5\)"):
        Resources(bank=bank, embedder=wider, pool=pool)


def test_load_refuses_an_unknown_format_version(small_bank_dir: Path) -> None:
    path = small_bank_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(BankMismatchError, match=f"format version {FORMAT_VERSION + 1}"):
        Bank.load(small_bank_dir)


def test_load_refuses_a_broken_manifest(small_bank_dir: Path) -> None:
    (small_bank_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BankMismatchError, match="not valid JSON"):
        Bank.load(small_bank_dir)


# ------------------------------------------------------------------------------------------
# write_bank: never overwrites silently, never leaves a half-written bank
# ------------------------------------------------------------------------------------------


def test_write_refuses_an_existing_directory(small_bank: Bank, tmp_path: Path) -> None:
    target = tmp_path / "bank"
    target.mkdir()
    with pytest.raises(BankExistsError, match="already exists"):
        write_bank(small_bank, target)
    assert list(target.iterdir()) == []


def test_write_with_force_replaces(small_bank_dir: Path) -> None:
    rows = [make_row("only row", {"a": 1.0})]
    new = build_bank(rows, round_trip_embedder(), source=synthetic_source())
    write_bank(new, small_bank_dir, force=True)
    assert Bank.load(small_bank_dir).queries == ["only row"]
    assert sorted(p.name for p in small_bank_dir.parent.iterdir()) == ["bank"]


def test_force_never_deletes_what_is_not_a_bank(tmp_path: Path, small_bank: Bank) -> None:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(BankExistsError, match="is not a bank .no manifest.json. and is not empty"):
        write_bank(small_bank, folder, force=True)
    assert (folder / "notes.txt").read_text() == "precious" and (folder / "sub").is_dir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    with pytest.raises(BankExistsError, match="is not a directory: --force only replaces a bank"):
        write_bank(small_bank, a_file, force=True)
    assert a_file.read_text() == "keep me"
    with pytest.raises(BankExistsError, match="it is not a directory"):
        write_bank(small_bank, a_file / "bank")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_bank(small_bank, empty, force=True) == empty
    assert Bank.load(empty).size == small_bank.size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "notes"]


def test_cli_build_force_refuses_a_folder_that_is_not_a_bank(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"query": "q", "records": {"a": 1.0}}) + "\n")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    result = CliRunner().invoke(app, ["bank", "build", str(data), "--out", str(folder), "--force"])
    assert result.exit_code == 2
    assert "is not a bank (no manifest.json)" in result.output
    assert (folder / "notes.txt").read_text() == "precious"


def test_failed_write_keeps_the_old_bank(
    small_bank_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = build_bank(
        [make_row("new row", {"a": 1.0})], round_trip_embedder(), source=synthetic_source()
    )

    def disk_full(*args: object) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(store.faiss, "write_index", disk_full)
    with pytest.raises(OSError, match="no space left"):
        write_bank(new, small_bank_dir, force=True)
    monkeypatch.undo()
    assert Bank.load(small_bank_dir).size == 3
    assert sorted(p.name for p in small_bank_dir.parent.iterdir()) == ["bank"]


def test_failed_final_rename_keeps_the_old_bank(
    small_bank_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = build_bank(
        [make_row("new row", {"a": 1.0})], round_trip_embedder(), source=synthetic_source()
    )
    real_rename = Path.rename
    renames: list[tuple[str, str]] = []

    def flaky_rename(self: Path, target: Path) -> Path:
        renames.append((self.name, Path(target).name))
        if len(renames) == 2:  # staging -> bank
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", flaky_rename)
    with pytest.raises(OSError, match="rename failed"):
        write_bank(new, small_bank_dir, force=True)
    monkeypatch.undo()
    assert renames[0] == ("bank", ".bank.old")
    assert Bank.load(small_bank_dir).size == 3
    assert sorted(p.name for p in small_bank_dir.parent.iterdir()) == ["bank"]


# ------------------------------------------------------------------------------------------
# neighbours(): every row the support set may need, against brute force
# ------------------------------------------------------------------------------------------


def brute_force_support(sims: np.ndarray, k: int, rag_thres: float) -> set[int]:
    """S by hand: every row with sq >= min(s_k, rag_thres * s_k); all rows if fewer than k."""
    if len(sims) <= k:
        return set(range(len(sims)))
    kth = float(np.sort(sims)[::-1][k - 1])
    threshold = min(kth, rag_thres * kth)
    return {j for j, s in enumerate(sims) if s >= threshold}


def check_neighbours(bank: Bank, query: np.ndarray, k: int, rag_thres: float) -> set[int]:
    from jisi_graph.routing import support_set

    found = bank.neighbours(query, k, rag_thres)
    sims_all = bank.query_embeddings @ query.astype(np.float32)
    expected = brute_force_support(sims_all, k, rag_thres)
    assert expected <= set(found.indices.tolist())
    assert len(set(found.indices.tolist())) == len(found.indices)  # no row twice
    assert np.all(np.diff(found.similarities) <= 1e-7)  # by decreasing similarity
    np.testing.assert_allclose(found.similarities, sims_all[found.indices], atol=1e-6)
    chosen = support_set(found.similarities, k, rag_thres)
    assert set(found.indices[chosen].tolist()) == expected
    return expected


@pytest.fixture(scope="module")
def tie_bank() -> Bank:
    """40 rows against the query e0: 3 close ones, 25 exact ties at .6 (distinct vectors),
    4 near-ties at .58, 8 far ones at .3."""
    dim = 8
    vectors: dict[str, list[float]] = {}
    sims = [0.99, 0.98, 0.97] + [0.6] * 25 + [0.58] * 4 + [0.3] * 8
    for j, s in enumerate(sims):
        rest = (1 - s * s) ** 0.5
        axis = 1 + j % (dim - 1)
        vector = [s] + [0.0] * (dim - 1)
        vector[axis] = rest
        vectors[f"row {j}"] = vector
    rows = [make_row(f"row {j}", {"m": 1.0}) for j in range(len(sims))]
    embedder = fake_embedder(vectors, default=basis(dim - 1, dim))
    return build_bank(rows, embedder, source=synthetic_source())


def test_neighbours_keep_ties_and_near_ties_past_k(tie_bank: Bank) -> None:
    query = np.array(basis(0, 8), dtype=np.float32)
    # k = 5: s_k = .6, threshold .57: the 3 close rows, all 25 ties and the 4 near-ties.
    # The first search fetches max(2k, k + 16) = 21 rows, all >= the threshold, so the range
    # search must find the rest.
    expected = check_neighbours(tie_bank, query, k=5, rag_thres=0.95)
    assert expected == set(range(32))
    # rag_thres = 1: exactly the rows tied with the k-th
    assert check_neighbours(tie_bank, query, k=5, rag_thres=1.0) == set(range(28))
    assert check_neighbours(tie_bank, query, k=2, rag_thres=0.95) == {0, 1, 2}
    assert check_neighbours(tie_bank, query, k=40, rag_thres=0.95) == set(range(40))
    assert check_neighbours(tie_bank, query, k=100, rag_thres=0.95) == set(range(40))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbours_match_brute_force_on_random_banks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 16
    distinct = rng.normal(size=(60, dim))
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    # each vector four times: many exact ties
    vectors = {f"row {j}": distinct[j % 60].tolist() for j in range(240)}
    rows = [make_row(f"row {j}", {"m": 1.0}) for j in range(240)]
    bank = build_bank(
        rows, fake_embedder(vectors, default=basis(0, dim)), source=synthetic_source()
    )
    for _ in range(4):
        query = distinct[rng.integers(60)] + 0.3 * rng.normal(size=dim)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        for k in (1, 3, 10, 50):
            for rag_thres in (1.0, 0.95, 0.7):
                check_neighbours(bank, query, k, rag_thres)


def test_neighbours_refuse_a_query_of_another_dimension(small_bank: Bank) -> None:
    with pytest.raises(BankMismatchError, match="dimension 3"):
        small_bank.neighbours(np.ones(3, dtype=np.float32), 2, 0.95)


# ------------------------------------------------------------------------------------------
# The real bank (real embedder)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bank_query_finds_itself(real_bank: Bank, embedder: Embedder) -> None:
    for j in (0, 17, real_bank.size - 1):
        vector = embedder.embed_one(real_bank.queries[j])
        found = real_bank.neighbours(vector, 50, 0.95)
        assert found.similarities[0] == pytest.approx(1.0, abs=1e-4)
        top = {int(i) for i, s in zip(found.indices, found.similarities, strict=True) if s > 0.9999}
        assert j in top
        assert found.indices[0] == j or real_bank.queries[found.indices[0]] == real_bank.queries[j]


@pytest.mark.slow
def test_real_bank_manifest_and_load_time(real_bank_dir: Path, real_rows: list[BankRow]) -> None:
    started = time.perf_counter()
    bank = Bank.load(real_bank_dir)
    seconds = time.perf_counter() - started
    print(f"\nreal bank of {bank.size} rows x {len(bank.models)} models loaded in {seconds:.3f} s")
    assert seconds < 2.0
    assert bank.size == len(real_rows) == 40
    assert bank.models == list(REAL_MODELS)
    assert bank.manifest.embedder.id == "sentence-transformers/all-MiniLM-L6-v2"
    assert bank.manifest.embedder.dim == 384
    assert bank.manifest.embedder.window == 256
    assert bank.manifest.source.limit == 40
    assert bank.answer_embeddings.dtype == np.float16
    assert isinstance(bank.answer_embeddings, np.memmap)


# ------------------------------------------------------------------------------------------
# The CLI: jisi bank build / info
# ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_embedder(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The CLI loads the session's embedder instead of a fresh copy; records what it asked."""
    asked: list[str | None] = []

    def load(spec: str | None = None, **kwargs: object) -> Embedder:
        asked.append(spec)
        return embedder

    monkeypatch.setattr(embedding, "load_embedder", load)
    return asked


@pytest.mark.slow
def test_cli_bank_build_and_info(
    data_file: Path, tmp_path: Path, cli_embedder: list[str | None]
) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-bank"
    models = "o1-mini-2024-09-12,gemma-2-2b-it"
    args = ["bank", "build", str(data_file), "--out", str(out), "--limit", "6", "--models", models]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert cli_embedder == [None]
    assert f"bank written to {out}: 6 rows, 2 models" in result.output
    bank = Bank.load(out)
    assert bank.size == 6 and bank.models == models.split(",")
    assert bank.manifest.source.limit == 6 and bank.manifest.source.sha256

    result = runner.invoke(app, ["bank", "info", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["rows"] == 6 and info["models"] == models.split(",")
    assert info["embedder"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["load_seconds"] < 2.0

    # an existing --out is refused, before any embedding
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert cli_embedder == [None]


def test_cli_bank_build_bad_data_file(tmp_path: Path, cli_embedder_fake: None) -> None:
    good = json.dumps({"query": "q", "records": {"m": 1.0}, "raw_output": {"m": "a"}})
    data = tmp_path / "bad.jsonl"
    data.write_text(good + "\n" + "{not json\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["bank", "build", str(data), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "line 2" in result.output and "not valid JSON" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_cli_bank_build_missing_file_and_bad_limit(tmp_path: Path, cli_embedder_fake: None) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["bank", "build", str(tmp_path / "no.jsonl"), "--out", "x"])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(
        app, ["bank", "build", str(tmp_path / "no.jsonl"), "--out", "x", "--limit", "0"]
    )
    assert result.exit_code == 2 and "--limit must be at least 1" in result.output


def test_cli_bank_info_refuses_a_non_bank(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bank", "info", str(tmp_path)])
    assert result.exit_code == 2
    assert "manifest.json is missing" in result.output


@pytest.fixture
def cli_embedder_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that must fail before embedding get an embedder that refuses to be loaded."""

    def refuse(*args: object, **kwargs: object) -> Embedder:
        raise AssertionError("the embedder should not be loaded")

    monkeypatch.setattr(embedding, "load_embedder", refuse)
