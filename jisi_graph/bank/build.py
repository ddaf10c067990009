"""Building a bank: embed every query and every model's answer once, and write the directory."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import faiss
import numpy as np

from jisi_graph.bank.manifest import MANIFEST_NAME, BankManifest, EmbedderRecord, SourceRecord
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.embedding import Embedder
from jisi_graph.voting import dataset_votability


class BankExistsError(FileExistsError):
    """The output directory already holds something; building never overwrites silently."""


def build_bank(
    rows: Sequence[BankRow],
    embedder: Embedder,
    *,
    source: SourceRecord,
    models: Sequence[str] | None = None,
    votable: Mapping[str, bool] | None = None,
    answer_window: int | None = None,
    progress: bool = False,
) -> Bank:
    """Embed `rows` into an in-memory bank (save it with `Bank.save` or `write_bank`).

    `models` fixes the model columns (default: every model scored in some row, in order of first
    appearance). `votable` declares, per dataset, whether extracted answers can be voted on;
    datasets it does not name are decided from the recorded answers (METHOD.md section 5).
    `answer_window` embeds only the last that many tokens of each answer (None: the embedder's
    whole window, as for the queries); the manifest records it for the query side.
    """
    started = time.perf_counter()
    if not rows:
        raise ValueError("no rows to build a bank from")
    if answer_window is not None and embedder.window is not None:
        answer_window = None if answer_window >= embedder.window else answer_window
    model_names = list(models) if models is not None else _models_in_order(rows)
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    n, m = len(rows), len(model_names)
    column = {name: i for i, name in enumerate(model_names)}

    scores = np.full((n, m), np.nan, dtype=np.float32)
    agg_scores = np.full((n, m), np.nan, dtype=np.float32)
    completion = np.full((n, m), np.nan, dtype=np.float32)
    prompt = np.full((n, m), np.nan, dtype=np.float32)
    costs = np.full((n, m), np.nan, dtype=np.float64)
    answered = np.zeros((n, m), dtype=bool)
    answer_texts: list[str] = []
    answer_cells: list[tuple[int, int]] = []
    for j, row in enumerate(rows):
        for name, score in row.records.items():
            if name in column:
                scores[j, column[name]] = score
        for name, score in (row.agg_records or {}).items():
            if name in column:
                agg_scores[j, column[name]] = score
        for name, usage in row.usages.items():
            if name in column:
                completion[j, column[name]] = usage.completion_tokens
                prompt[j, column[name]] = usage.prompt_tokens
                if usage.cost is not None:
                    costs[j, column[name]] = usage.cost
        for name, text in row.raw_output.items():
            if name in column:
                answered[j, column[name]] = True
                answer_texts.append(text)
                answer_cells.append((j, column[name]))

    queries = [row.query for row in rows]
    distinct = len(set(queries)) + len(set(answer_texts))
    query_vectors = embedder.embed(queries, progress="embedding queries" if progress else False)
    dim = query_vectors.shape[1]
    answer_vectors = embedder.embed_answers(
        answer_texts, progress="embedding answers" if progress else False, window=answer_window
    )
    answer_embeddings = np.zeros((n, m, dim), dtype=np.float16)
    if answer_cells:
        rows_idx, cols_idx = np.array(answer_cells).T
        answer_embeddings[rows_idx, cols_idx] = answer_vectors.astype(np.float16)
    index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(query_vectors))

    reports = dataset_votability(rows)
    decided = {name: report.votable for name, report in reports.items()}
    decided.update({name: bool(flag) for name, flag in (votable or {}).items() if name in decided})
    has_agg = bool(np.any(~np.isnan(agg_scores)))
    manifest = BankManifest(
        embedder=EmbedderRecord(
            id=embedder.id,
            dim=dim,
            window=embedder.window,
            answer_window=answer_window,
            runtime=embedder.runtime,
        ),
        models=model_names,
        datasets=datasets,
        rows=n,
        answers=len(answer_texts),
        distinct_texts=distinct,
        source=source,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 2),
        votable=decided,
        votability={name: report.to_dict() for name, report in reports.items()},
        has_agg_records=has_agg,
        jisi_graph_version=_package_version(),
    )
    dataset_position = {name: i for i, name in enumerate(datasets)}
    return Bank(
        manifest=manifest,
        index=index,
        ids=[_row_id(row, j) for j, row in enumerate(rows)],
        queries=queries,
        scores=scores,
        completion_tokens=completion,
        prompt_tokens=prompt,
        costs=costs,
        answered=answered,
        answer_embeddings=answer_embeddings,
        dataset_ids=np.array([dataset_position[row.dataset] for row in rows], dtype=np.int32),
        agg_scores=agg_scores if has_agg else None,
    )


def check_bank_target(out_dir: str | Path, *, force: bool = False) -> Path:
    """Where a bank may be written: a new path, or with `force` an existing bank or empty folder.

    Raises BankExistsError for anything else, so that `--force` never deletes what is not a bank.
    """
    target = Path(out_dir)
    if not target.exists() and not target.is_symlink():
        parent = next((p for p in target.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise BankExistsError(f"cannot write a bank under {parent}: it is not a directory")
        return target
    if not force:
        raise BankExistsError(
            f"{target} already exists; choose another --out or pass --force to replace it"
        )
    if target.is_symlink() or not target.is_dir():
        raise BankExistsError(f"{target} is not a directory: --force only replaces a bank")
    if not (target / MANIFEST_NAME).is_file() and any(target.iterdir()):
        raise BankExistsError(
            f"{target} is not a bank (no {MANIFEST_NAME}) and is not empty: --force only "
            "replaces a bank, so nothing was deleted; choose another --out"
        )
    return target


def write_bank(bank: Bank, out_dir: str | Path, *, force: bool = False) -> Path:
    """Save a bank to `out_dir` atomically: a failed write leaves any existing bank intact."""
    target = check_bank_target(out_dir, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        bank.save(staging)
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            target.rename(backup)
            try:
                staging.rename(target)
            except BaseException:
                backup.rename(target)  # put the old bank back
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bank.path = target
    return target


def _models_in_order(rows: Sequence[BankRow]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for name in row.records:
            seen.setdefault(name, None)
    return list(seen)


def _row_id(row: BankRow, position: int) -> str:
    if row.index is None:
        return f"{row.dataset}#{position}"
    return str(row.index)


def _package_version() -> str:
    try:
        return version("jisi-graph")
    except PackageNotFoundError:
        return "unknown"
