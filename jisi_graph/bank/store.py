"""The bank on disk and in memory: save, load (checked against the manifest), search.

A bank directory holds a FAISS inner-product index over the query embeddings, the answer
embeddings (float16, memory-mapped at load), the score / token / cost matrices (NaN where a model
has no record), the rows' ids and queries, and `manifest.json` with every file's checksum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from jisi_graph.bank.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    BankManifest,
    BankMismatchError,
    FileRecord,
)
from jisi_graph.routing import comprehensive_ability

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.jsonl"
ARRAY_FILES = {
    "scores": "scores.npy",
    "completion_tokens": "completion_tokens.npy",
    "prompt_tokens": "prompt_tokens.npy",
    "costs": "costs.npy",
    "answered": "answered.npy",
    "answer_embeddings": "answer_embeddings.npy",
    "dataset_ids": "dataset_ids.npy",
}
AGG_SCORES_FILE = "agg_scores.npy"
_EXTRA_FETCH = 16


@dataclass(frozen=True)
class Neighbours:
    """Bank rows near a query, by decreasing similarity."""

    indices: np.ndarray
    similarities: np.ndarray


@dataclass
class Bank:
    """An embedding bank: past queries, every model's answers, scores, tokens and costs."""

    manifest: BankManifest
    index: faiss.Index
    ids: list[str]
    queries: list[str]
    scores: np.ndarray
    completion_tokens: np.ndarray
    prompt_tokens: np.ndarray
    costs: np.ndarray
    answered: np.ndarray
    answer_embeddings: np.ndarray
    dataset_ids: np.ndarray
    agg_scores: np.ndarray | None = None
    path: Path | None = None

    @property
    def models(self) -> list[str]:
        """Model names, in the column order of every matrix."""
        return self.manifest.models

    @property
    def datasets(self) -> list[str]:
        """Dataset names; `dataset_ids` indexes this list."""
        return self.manifest.datasets

    @property
    def size(self) -> int:
        """Number of bank rows."""
        return len(self.ids)

    @property
    def query_embeddings(self) -> np.ndarray:
        """The (rows, dim) query embeddings, a view of the FAISS index's own storage."""
        flat = faiss.rev_swig_ptr(self.index.get_xb(), self.size * self.index.d)
        return np.asarray(flat).reshape(self.size, self.index.d)

    def comprehensive_ability(self) -> np.ndarray:
        """G per model: mean aggregation score where recorded, else mean score (METHOD.md 2)."""
        ability = comprehensive_ability(self.scores)
        if self.agg_scores is not None:
            agg = comprehensive_ability(self.agg_scores)
            ability = np.where(np.isnan(agg), ability, agg)
        return ability

    def model_index(self, name: str) -> int:
        """Column of a model, with a clear error for an unknown one."""
        try:
            return self.models.index(name)
        except ValueError:
            raise KeyError(
                f"model {name!r} is not in this bank; its models are: {', '.join(self.models)}"
            ) from None

    def neighbours(self, query_embedding: np.ndarray, k: int, rag_thres: float) -> Neighbours:
        """Every bank row that can be in the support set of this query (METHOD.md section 1).

        Returns at least the k nearest rows and every row whose similarity reaches
        min(s_k, rag_thres * s_k); `routing.support_set` then picks S exactly from these.
        """
        query = np.ascontiguousarray(query_embedding, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.index.d:
            raise BankMismatchError(
                f"query embedding has dimension {query.shape[1]}, the bank {self.index.d}"
            )
        fetch = min(self.size, max(2 * k, k + _EXTRA_FETCH))
        if fetch == 0:
            return Neighbours(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        sims, idx = self.index.search(query, fetch)
        sims, idx = sims[0], idx[0]
        if fetch < self.size:
            kth = float(sims[min(k, fetch) - 1])
            threshold = min(kth, rag_thres * kth)
            if sims[-1] >= threshold:
                _, range_sims, range_idx = self.index.range_search(query, threshold - 1e-6)
                order = np.argsort(-range_sims, kind="stable")
                sims, idx = range_sims[order], range_idx[order]
        return Neighbours(idx.astype(np.int64), sims.astype(np.float32))

    def check_embedder(
        self, embedder_id: str, dim: int | None = None, window: int | None = None
    ) -> None:
        """Refuse to go on with an embedder other than the one the bank was built with.

        The window counts too: a text cut to another number of tokens is embedded differently.
        A window that either side does not know (None) is not compared.
        """
        recorded = self.manifest.embedder
        if embedder_id != recorded.id or (dim is not None and dim != recorded.dim):
            raise BankMismatchError(
                f"bank {self.path or ''} was built with embedder {recorded.id!r} "
                f"(dimension {recorded.dim}), not {embedder_id!r}"
                + (f" (dimension {dim})" if dim is not None else "")
                + "; rebuild the bank with this embedder or use the bank's own"
            )
        if window is not None and recorded.window is not None and window != recorded.window:
            raise BankMismatchError(
                f"bank {self.path or ''} was built with a window of {recorded.window} tokens per "
                f"text, but the embedder keeps {window}; load the embedder with the bank's "
                f"window (load_embedder(..., window={recorded.window}))"
            )

    def save(self, directory: Path) -> None:
        """Write every file into `directory` (which must exist) and the manifest last."""
        files = {name: file for name, file in ARRAY_FILES.items()}
        for name, file in files.items():
            np.save(directory / file, getattr(self, name), allow_pickle=False)
        if self.agg_scores is not None:
            np.save(directory / AGG_SCORES_FILE, self.agg_scores, allow_pickle=False)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        with open(directory / ROWS_FILE, "w", encoding="utf-8") as out:
            for row_id, query in zip(self.ids, self.queries, strict=True):
                out.write(json.dumps({"id": row_id, "query": query}, ensure_ascii=False) + "\n")
        names = [*files.values(), INDEX_FILE, ROWS_FILE]
        if self.agg_scores is not None:
            names.append(AGG_SCORES_FILE)
        self.manifest.files = {name: _file_record(directory / name) for name in sorted(names)}
        (directory / MANIFEST_NAME).write_text(self.manifest.model_dump_json(indent=2) + "\n")
        self.path = directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder_id: str | None = None,
        verify: bool = True,
    ) -> Bank:
        """Load a bank directory, checking it against its manifest (and the caller's embedder).

        Nothing is embedded. Answer embeddings are memory-mapped. With `verify`, every file's
        size and SHA-256 must match the manifest.
        """
        path = Path(directory)
        manifest = _read_manifest(path)
        if verify:
            _verify_files(path, manifest)
        arrays = {
            name: np.load(path / file, mmap_mode="r" if name == "answer_embeddings" else None)
            for name, file in ARRAY_FILES.items()
        }
        agg_path = path / AGG_SCORES_FILE
        agg_scores = np.load(agg_path) if manifest.has_agg_records else None
        if manifest.has_agg_records and not agg_path.is_file():
            raise BankMismatchError(f"bank {path}: {AGG_SCORES_FILE} is missing")
        ids, queries = [], []
        with open(path / ROWS_FILE, encoding="utf-8") as rows:
            for line in rows:
                record = json.loads(line)
                ids.append(record["id"])
                queries.append(record["query"])
        bank = cls(
            manifest=manifest,
            index=faiss.read_index(str(path / INDEX_FILE)),
            ids=ids,
            queries=queries,
            agg_scores=agg_scores,
            path=path,
            **arrays,
        )
        _check_shapes(bank)
        if embedder_id is not None:
            bank.check_embedder(embedder_id)
        return bank


def _read_manifest(path: Path) -> BankManifest:
    if not path.is_dir():
        raise BankMismatchError(f"no bank at {path}: not a directory")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BankMismatchError(
            f"no bank at {path}: {MANIFEST_NAME} is missing (build one with `jisi bank build`)"
        )
    try:
        raw = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise BankMismatchError(
            f"bank {path}: {MANIFEST_NAME} is not valid JSON ({error})"
        ) from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise BankMismatchError(
            f"bank {path} has format version {version}; this jisi-graph reads version "
            f"{FORMAT_VERSION}: rebuild it with `jisi bank build`"
        )
    try:
        return BankManifest.model_validate(raw)
    except ValueError as error:
        raise BankMismatchError(f"bank {path}: {MANIFEST_NAME} is invalid: {error}") from None


def _verify_files(path: Path, manifest: BankManifest) -> None:
    expected = set(ARRAY_FILES.values()) | {INDEX_FILE, ROWS_FILE}
    missing_from_manifest = expected - set(manifest.files)
    if missing_from_manifest:
        raise BankMismatchError(
            f"bank {path}: the manifest lists no checksum for {sorted(missing_from_manifest)}"
        )
    for name, record in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BankMismatchError(f"bank {path}: file {name} is missing")
        actual = _file_record(file)
        if actual.bytes != record.bytes or actual.sha256 != record.sha256:
            raise BankMismatchError(
                f"bank {path}: file {name} does not match its manifest checksum "
                "(altered or truncated); rebuild the bank"
            )


def _check_shapes(bank: Bank) -> None:
    rows, models = bank.size, len(bank.models)
    for name in ("scores", "completion_tokens", "prompt_tokens", "costs", "answered"):
        if getattr(bank, name).shape != (rows, models):
            raise BankMismatchError(f"bank {bank.path}: {name} has the wrong shape")
    dim = bank.manifest.embedder.dim
    if bank.answer_embeddings.shape != (rows, models, dim) or bank.index.ntotal != rows:
        raise BankMismatchError(f"bank {bank.path}: embeddings do not match the manifest")


def _file_record(file: Path) -> FileRecord:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return FileRecord(bytes=file.stat().st_size, sha256=digest.hexdigest())
