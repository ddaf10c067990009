"""Embedder runtimes: choosing one, the OpenVINO batching helpers, agreement with the float32
reference, and the runtime recorded in a bank's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_embedder, make_row, synthetic_source
from typer.testing import CliRunner

from jisi_graph import embedding
from jisi_graph.bank.build import build_bank, write_bank
from jisi_graph.bank.manifest import MANIFEST_NAME
from jisi_graph.bank.store import Bank
from jisi_graph.cli import app
from jisi_graph.embedding import (
    DEFAULT_EMBEDDER_ID,
    RUNTIME_ENV,
    Embedder,
    embedder_cache_dir,
    load_embedder,
    resolve_runtime,
)
from jisi_graph.embedding_openvino import length_batches, pad_batch

# ------------------------------------------------------------------------------------------
# Choosing a runtime
# ------------------------------------------------------------------------------------------


def test_resolve_runtime_explicit_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    assert resolve_runtime("torch") == "torch"
    assert resolve_runtime("torch-bf16") == "torch-bf16"
    assert resolve_runtime(None) == "openvino-int8"  # openvino and nncf come with the package
    monkeypatch.setenv(RUNTIME_ENV, "torch-bf16")
    assert resolve_runtime(None) == "torch-bf16"
    assert resolve_runtime("openvino") == "openvino"  # the argument wins over the environment


def test_resolve_runtime_refuses_an_unknown_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"unknown embedder runtime 'onnx'; choose one of torch"):
        resolve_runtime("onnx")
    monkeypatch.setenv(RUNTIME_ENV, "fast")
    with pytest.raises(ValueError, match="unknown embedder runtime 'fast'"):
        resolve_runtime(None)


def test_default_falls_back_without_its_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    installed = {"openvino"}
    monkeypatch.setattr(
        embedding.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    assert resolve_runtime(None) == "openvino"  # no nncf to quantize with
    installed.clear()
    assert resolve_runtime(None) == "torch"
    assert resolve_runtime("openvino") == "openvino"  # asked for explicitly: not replaced
    assert resolve_runtime("openvino-int8") == "openvino-int8"


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JISI_CACHE_DIR", str(tmp_path / "c"))
    assert embedder_cache_dir() == tmp_path / "c" / "embedders"
    monkeypatch.delenv("JISI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert embedder_cache_dir() == tmp_path / "x" / "jisi_graph" / "embedders"


# ------------------------------------------------------------------------------------------
# Batching helpers
# ------------------------------------------------------------------------------------------


def test_pad_batch_pads_right_with_a_mask() -> None:
    ids, mask, types = pad_batch([[101, 7, 102], [101, 102], [101, 5, 6, 102]], pad_id=0)
    np.testing.assert_array_equal(ids, [[101, 7, 102, 0], [101, 102, 0, 0], [101, 5, 6, 102]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(types, np.zeros((3, 4)))
    assert ids.dtype == mask.dtype == types.dtype == np.int64
    empty_ids, empty_mask, _ = pad_batch([])
    assert empty_ids.shape == empty_mask.shape == (0, 0)
    # rounded up to a multiple of tokens: few distinct shapes for OpenVINO to compile
    ids, mask, _ = pad_batch([[101, 7, 102], [101, 102]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(ids, [[101, 7, 102, 0], [101, 102, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 0, 0]])
    assert pad_batch([[1] * 17], multiple=16)[0].shape == (1, 32)
    assert pad_batch([[1] * 16], multiple=16)[0].shape == (1, 16)


@pytest.mark.slow
def test_openvino_memory_is_bounded_over_many_lengths() -> None:
    """One text of every length up to the window: a few shapes are compiled, not one per length.

    (Unpadded, lengths 30 to 250 words grew the int8 embedder by 1.1 GB; padded, by about 80 MB.)
    """

    def rss_mib() -> float:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    embedder = load_embedder(runtime="openvino-int8")
    for n in range(1, 30):
        embedder.embed_answers([" ".join(["word"] * n)])
    warm = rss_mib()
    for n in range(30, 250):
        embedder.embed_answers([" ".join(["word"] * n)])
    assert rss_mib() - warm < 300


def test_length_batches_groups_by_length() -> None:
    assert length_batches([5, 1, 9, 3, 7], 2) == [[1, 3], [0, 4], [2]]
    assert length_batches([4, 4, 4], 5) == [[0, 1, 2]]  # ties keep their order
    assert length_batches([], 3) == []
    with pytest.raises(ValueError, match="batch_size must be at least 1, not 0"):
        length_batches([1], 0)


# ------------------------------------------------------------------------------------------
# The runtime in the manifest
# ------------------------------------------------------------------------------------------


def test_bank_records_the_runtime_and_old_manifests_read_as_torch(tmp_path: Path) -> None:
    rows = [make_row("q1", {"a": 1.0}), make_row("q2", {"a": 0.0})]
    fake = fake_embedder({}, [1.0, 0.0])
    fast = Embedder(embeddings=fake.embeddings, id=fake.id, window=None, runtime="openvino")
    bank = build_bank(rows, fast, source=synthetic_source())
    assert bank.manifest.embedder.runtime == "openvino"
    write_bank(bank, tmp_path / "bank")
    loaded = Bank.load(tmp_path / "bank", embedder_id=fake.id)
    assert loaded.manifest.embedder.runtime == "openvino"
    # a bank from before the field existed: the manifest has no runtime, it was torch
    manifest = json.loads((tmp_path / "bank" / MANIFEST_NAME).read_text())
    del manifest["embedder"]["runtime"]
    (tmp_path / "bank" / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert Bank.load(tmp_path / "bank").manifest.embedder.runtime == "torch"
    # the runtime is not part of the identity: a torch embedder may query an openvino bank
    loaded.check_embedder(fake.id, 2)


def test_cli_bank_build_refuses_an_unknown_runtime(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"query": "q", "records": {"m": 1.0}, "raw_output": {"m": "a"}}))
    result = CliRunner().invoke(
        app,
        ["bank", "build", str(data), "--out", str(tmp_path / "b"), "--embedder-runtime", "onnx"],
    )
    assert result.exit_code == 2
    assert "unknown embedder runtime 'onnx'" in result.output
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------
# Real model: every runtime agrees with the float32 reference
# ------------------------------------------------------------------------------------------

TEXTS = [
    "What is 2 + 2?",
    "x",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "A much longer reasoning trace about apples " * 120 + " so the answer is 42.",
]


@pytest.fixture(scope="module")
def reference() -> Embedder:
    return load_embedder(runtime="torch")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "least"), [("openvino", 0.9999), ("torch-bf16", 0.9995), ("openvino-int8", 0.98)]
)
def test_runtime_agrees_with_float32(reference: Embedder, runtime: str, least: float) -> None:
    fast = load_embedder(runtime=runtime)
    assert (fast.id, fast.runtime, fast.window, fast.dim) == (
        DEFAULT_EMBEDDER_ID,
        runtime,
        256,
        384,
    )
    expected = reference.embed(TEXTS)
    got = fast.embed(TEXTS)
    assert got.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (expected * got).sum(axis=1)
    assert cosines.min() > least
    # the query path agrees with the document path
    assert float(fast.embed_one(TEXTS[2]) @ got[2]) > least


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "least"), [("openvino", 0.9999), ("openvino-int8", 0.95)])
def test_openvino_keeps_the_last_tokens(reference: Embedder, runtime: str, least: float) -> None:
    fast = load_embedder(runtime=runtime)
    words = [f"w{i % 97}" for i in range(400)]
    long_text = "apple " * 300 + " ".join(words)
    tail = fast.embed_one(long_text)
    # the first 300 words are past the window: exactly the end of the text is embedded
    assert float(tail @ fast.embed_one(" ".join(words))) > 0.99999
    # and the reference (left truncation) agrees, to the runtime's precision on this odd text
    assert float(tail @ reference.embed_one(long_text)) > least
    assert float(tail @ fast.embed_one("apple " * 300)) < 0.5


# A fresh process for each attempt: the binding's first numpy conversion is where two threads
# used to deadlock (one attempt in eight hung before inference was serialised).
CONCURRENT_FIRST_USE = """
import sys, threading, time
from jisi_graph.embedding import load_embedder
embedder = load_embedder(runtime="openvino")
texts = [f"question {i}: " + "how many apples? " * (i % 7 + 1) for i in range(16)]
start = threading.Barrier(8)
got = {}
def work(worker):
    start.wait()
    for i in range(worker, len(texts), 8):
        got[i] = embedder.embed_one(texts[i])
threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(8)]
for t in threads:
    t.start()
deadline = time.monotonic() + 30
for t in threads:
    t.join(max(0.0, deadline - time.monotonic()))
if any(t.is_alive() for t in threads):
    print("hung"); sys.stdout.flush(); import os; os._exit(3)
serial = embedder.embed(texts)
worst = min(float(got[i] @ serial[i]) for i in range(len(texts)))
print(f"ok {worst:.6f}")
"""


@pytest.mark.slow
def test_openvino_first_use_from_many_threads_neither_hangs_nor_mixes_outputs() -> None:
    import subprocess
    import sys

    for _ in range(10):
        done = subprocess.run(
            [sys.executable, "-c", CONCURRENT_FIRST_USE],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        verdict, worst = done.stdout.split()
        # each thread's vector is the serial vector of its own text (the request is shared)
        assert verdict == "ok" and float(worst) > 0.99999


# ------------------------------------------------------------------------------------------
# A shorter window
# ------------------------------------------------------------------------------------------


ONE_TOKEN_WORDS = "ocean pencil winter bridge candle forest silver engine letter planet".split()  # noqa: SIM905


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "torch"])
def test_a_shorter_window_keeps_that_many_last_tokens(reference: Embedder, runtime: str) -> None:
    short = load_embedder(runtime=runtime, window=64)
    assert short.window == 64
    # 150 words of one token each, in an order that does not repeat within the window
    words = [ONE_TOKEN_WORDS[(i * 3 + i // 10) % 10] for i in range(150)]
    text = " ".join(words)
    vector = short.embed_one(text)
    # [CLS] and [SEP] take two of the 64 places: the last 62 words are what is kept
    assert float(vector @ short.embed_one(" ".join(words[-62:]))) > 0.9999
    assert float(vector @ short.embed_one(" ".join(words[-61:]))) < 0.9999
    # the full window sees more of the text: another vector
    assert float(vector @ reference.embed_one(text)) < 0.99
    # texts within the window embed as with the full window
    assert float(short.embed_one("What is 2 + 2?") @ reference.embed_one("What is 2 + 2?")) > 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "torch"])
@pytest.mark.parametrize(
    ("window", "message"),
    [(257, "exceeds sentence-transformers/all-MiniLM-L6-v2's own 256"), (4, "at least 8")],
)
def test_a_window_out_of_bounds_is_refused(runtime: str, window: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_embedder(runtime=runtime, window=window)


def test_resources_refuse_an_embedder_with_another_window(tmp_path: Path) -> None:
    from conftest import ScriptedChat, basis, scripted_pool

    from jisi_graph.bank.store import BankMismatchError
    from jisi_graph.resources import Resources

    rows = [make_row(f"q{i}", {"a": 1.0}) for i in range(3)]
    bank = build_bank(
        rows, _windowed(fake_embedder({}, basis(0, 4)), 32), source=synthetic_source()
    )
    directory = write_bank(bank, tmp_path / "bank")
    loaded = Bank.load(directory)
    assert loaded.manifest.embedder.window == 32
    pool = scripted_pool({"a": ScriptedChat(model_name="a")})
    with pytest.raises(BankMismatchError, match="window of 32 tokens per text, but the embedder"):
        Resources(bank=loaded, embedder=_windowed(fake_embedder({}, basis(0, 4)), 256), pool=pool)
    # the bank's own window, or an embedder that does not know its window, is accepted
    Resources(bank=loaded, embedder=_windowed(fake_embedder({}, basis(0, 4)), 32), pool=pool)
    Resources(bank=loaded, embedder=fake_embedder({}, basis(0, 4)), pool=pool)


def _windowed(embedder: Embedder, window: int) -> Embedder:
    from dataclasses import replace

    return replace(embedder, window=window)


@pytest.mark.slow
def test_cli_window_is_recorded_and_queries_use_it(data_file: Path, tmp_path: Path) -> None:
    from jisi_graph.resources import load_bank_embedder

    out = tmp_path / "w64"
    args = ["bank", "build", str(data_file), "--out", str(out), "--limit", "3"]
    result = CliRunner().invoke(app, [*args, "--models", "gemma-2-2b-it", "--window", "64"])
    assert result.exit_code == 0, result.output
    bank = Bank.load(out)
    assert bank.manifest.embedder.window == 64
    query_side = load_bank_embedder(bank)
    assert query_side.window == 64
    # a stored query finds itself with the bank's own window
    found = bank.neighbours(query_side.embed_one(bank.queries[1]), k=1, rag_thres=1.0)
    assert found.indices[0] == 1 and found.similarities[0] > 0.9999
    refused = CliRunner().invoke(app, [*args, "--window", "300", "--force"])
    assert refused.exit_code == 2
    assert "exceeds" in refused.output and "Traceback" not in refused.output


@pytest.mark.slow
def test_int8_runtime_embeds_queries_in_bf16_and_answers_in_int8() -> None:
    bf16 = load_embedder(runtime="openvino")
    int8 = load_embedder(runtime="openvino-int8")
    assert int8.runtime == "openvino-int8" and int8.answer_embeddings is not None
    text = TEXTS[2]
    # queries choose the support set: the bfloat16 model, exactly
    assert float(int8.embed_one(text) @ bf16.embed_one(text)) > 0.99999
    np.testing.assert_allclose(int8.embed([text]), bf16.embed([text]), atol=1e-6)
    # answers go through the quantized model: close, not the same
    answer = int8.embed_answers([text])[0]
    assert 0.98 < float(answer @ bf16.embed_one(text)) < 0.99999
    # the float runtimes embed answers with their one model
    np.testing.assert_allclose(bf16.embed_answers([text]), bf16.embed([text]), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "openvino-int8", "torch"])
@pytest.mark.parametrize("count", [3, 8, 9, 40])
def test_vectors_come_back_in_the_order_of_the_texts(runtime: str, count: int) -> None:
    """Batches group texts by token length; each vector must still be its own text's."""
    embedder = load_embedder(runtime=runtime)
    # longest first, and a short text of many tokens after a long one of few tokens
    texts = [("step " * (count - i)) + f"answer {i}" for i in range(count)]
    texts[-1] = "3.14159 26535 89793 23846 26433 83279"
    for embed in (embedder.embed, embedder.embed_answers):
        together = embed(texts)
        alone = np.stack([embed([text])[0] for text in texts])
        np.testing.assert_allclose((together * alone).sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino-int8", "torch"])
def test_an_unpaired_surrogate_in_an_answer_is_embedded_as_a_replacement(runtime: str) -> None:
    """A model's answer may hold an unpaired surrogate; the tokenizer refuses such text."""
    embedder = load_embedder(runtime=runtime)
    broken, replaced = "the answer is \udc00 42", "the answer is \ufffd 42"
    for embed in (embedder.embed, embedder.embed_answers):
        np.testing.assert_allclose(embed([broken, "x"]), embed([replaced, "x"]), atol=1e-6)
    np.testing.assert_allclose(embedder.embed_one(broken), embedder.embed_one(replaced), atol=1e-6)
