"""Read bank rows from JSON Lines files (plain or gzip), local directories or the Hugging Face Hub.

Every problem in the data comes out as a :class:`BankFormatError` naming the file, the 1-based
line and the field, so a bad bank is fixed at its source rather than debugged downstream.
"""

import gzip
import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from jisi_graph.bank.schema import BankFormatError, BankRow, validate_row

HF_PREFIX = "hf://"
DEFAULT_SPLIT = "train"
"""The split of a row whose ``split`` is null."""

_GZIP_MAGIC = b"\x1f\x8b"
_SUFFIXES = (".jsonl", ".jsonl.gz")
_LIST_LIMIT = 8
_BLANK = object()


def _open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing it if it starts with the gzip magic."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")


def _decode_line(raw: bytes, line_no: int, name: str) -> object:
    """Decode one line's JSON value, or return ``_BLANK`` for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        raise BankFormatError(reason, path=name, line=line_no) from None
    if line_no == 1:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return _BLANK
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"line is not valid JSON ({exc.msg} at column {exc.colno})"
        raise BankFormatError(reason, path=name, line=line_no) from None


def _numbered_rows(path: Path, name: str) -> Iterator[tuple[int, BankRow]]:
    """Yield ``(line number, row)`` for each non-blank line; errors are reported as ``name``."""
    if not path.exists():
        raise FileNotFoundError(f"bank file not found: {name}")
    if path.is_dir():
        raise IsADirectoryError(f"{name} is a directory: use load_rows to read all its files")
    count = line_no = 0
    with _open_binary(path) as fh:
        try:
            for line_no, raw in enumerate(fh, start=1):
                data = _decode_line(raw, line_no, name)
                if data is not _BLANK:
                    count += 1
                    yield line_no, validate_row(data, path=name, line=line_no)
        except (OSError, EOFError, zlib.error) as exc:
            reason = f"cannot read the file, is the compressed data cut or corrupt? ({exc})"
            raise BankFormatError(reason, path=name, line=line_no + 1) from None
    if count == 0:
        raise BankFormatError("file holds no rows (it is empty or only blank lines)", path=name)


def iter_rows(path: str | Path) -> Iterator[BankRow]:
    """Iterate over the validated rows of a ``.jsonl`` or ``.jsonl.gz`` file, skipping blank lines.

    Gzip is detected by its magic bytes, whatever the suffix. Raises ``FileNotFoundError`` for a
    missing file and :class:`BankFormatError` for a malformed or empty one.
    """
    for _, row in _numbered_rows(Path(path), str(path)):
        yield row


def file_sha256(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def parse_hf_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``hf://owner/name[@revision][/path/in/repo]`` into repo id, path and revision."""
    parts = uri.removeprefix(HF_PREFIX).strip("/").split("/")
    if not uri.startswith(HF_PREFIX) or len(parts) < 2 or not all(parts[:2]):
        raise ValueError(
            f"not a Hub dataset id: {uri!r} (expected hf://owner/name or hf://owner/name/file.jsonl)"
        )
    name, _, revision = parts[1].partition("@")
    path_in_repo = "/".join(parts[2:]) or None
    return f"{parts[0]}/{name}", path_in_repo, revision or None


def load_rows(
    source: str | Path,
    *,
    split: str | None = None,
    models: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[BankRow]:
    """Load and check the bank rows of a file, a directory or a Hub dataset (``hf://owner/name``).

    A directory contributes its own ``*.jsonl`` and ``*.jsonl.gz`` files (not its subfolders')
    in sorted order; a Hub dataset, all of them at any depth, by path. ``split``
    keeps the rows of that split (a null split counts as ``"train"``); ``models`` keeps only those
    models' scores, usages and answers; ``limit`` keeps the first rows after the split filter.
    The loaded rows must have at least one row, every requested model, and an answer for each
    scored model somewhere, else :class:`BankFormatError`.
    """
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        repo_id, path_in_repo, revision = parse_hf_uri(source)
        return load_hub_rows(
            repo_id, path_in_repo, split=split, models=models, limit=limit, revision=revision
        )
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"bank source not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))
        if not files:
            raise BankFormatError("directory holds no .jsonl or .jsonl.gz files", path=path)
    else:
        files = [path]
    return _collect([(f, str(f)) for f in files], str(path), split, models, limit)


def load_hub_rows(
    repo_id: str,
    path_in_repo: str | None = None,
    *,
    split: str | None = None,
    models: Sequence[str] | None = None,
    limit: int | None = None,
    revision: str | None = None,
) -> list[BankRow]:
    """Download a Hub dataset's JSON Lines files (or one file or folder of it) and load them.

    Uses ``huggingface_hub.snapshot_download`` (its cache makes a second load local); the
    filters and checks are those of :func:`load_rows`.
    """
    from huggingface_hub import snapshot_download

    inner = path_in_repo.strip("/") if path_in_repo else None
    if inner is None:
        patterns = [f"*{suffix}" for suffix in _SUFFIXES]
    elif inner.endswith(_SUFFIXES):
        patterns = [inner]
    else:
        patterns = [f"{inner}/*{suffix}" for suffix in _SUFFIXES]
    snapshot = snapshot_download(
        repo_id=repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns
    )
    if not isinstance(snapshot, str | Path):
        raise TypeError(f"snapshot_download returned {type(snapshot).__name__}, not a folder")
    local = Path(snapshot)
    uri = f"{HF_PREFIX}{repo_id}" + (f"/{inner}" if inner else "")
    root = local / inner if inner else local
    if not root.exists():
        raise FileNotFoundError(f"{uri}: no such file or folder in the dataset repository")
    if root.is_file():
        files = [root]
    else:
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.name.endswith(_SUFFIXES)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    if not files:
        raise BankFormatError("no .jsonl or .jsonl.gz files in the dataset repository", path=uri)
    named = [(f, f"{HF_PREFIX}{repo_id}/{f.relative_to(local).as_posix()}") for f in files]
    return _collect(named, uri, split, models, limit)


def _collect(
    files: Sequence[tuple[Path, str]],
    source: str,
    split: str | None,
    models: Sequence[str] | None,
    limit: int | None,
) -> list[BankRow]:
    """Read, filter and check the rows of ``files``; ``source`` names them all in errors."""
    if isinstance(models, str):
        raise TypeError(f"models must be a sequence of model names, not the string {models!r}")
    wanted = None if models is None else list(dict.fromkeys(models))
    if wanted is not None and not wanted:
        raise ValueError("models must name at least one model (or be None for all)")
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    kept: list[tuple[str, int, BankRow]] = []
    splits: Counter[str] = Counter()
    seen_models: set[str] = set()
    for path, name in files:
        for line, row in _numbered_rows(path, name):
            row_split = DEFAULT_SPLIT if row.split is None else row.split
            splits[row_split] += 1
            if split is not None and row_split != split:
                continue
            seen_models.update(row.records)
            kept.append((name, line, row if wanted is None else _restrict(row, wanted)))
            if limit is not None and len(kept) >= limit:
                break
        if limit is not None and len(kept) >= limit:
            break
    if not kept:
        present = ", ".join(f"{s!r} ({_n_rows(n)})" for s, n in sorted(splits.items()))
        raise BankFormatError(f"no row has split {split!r}; splits present: {present}", path=source)
    _check_collection(kept, source, split, wanted, seen_models)
    return [row for _, _, row in kept]


def _restrict(row: BankRow, models: Sequence[str]) -> BankRow:
    """Return ``row`` keeping only ``models`` in its per-model tables (no re-validation)."""
    keep = set(models)
    update: dict[str, object] = {
        "records": {m: v for m, v in row.records.items() if m in keep},
        "usages": {m: v for m, v in row.usages.items() if m in keep},
        "raw_output": {m: v for m, v in row.raw_output.items() if m in keep},
    }
    if row.agg_records is not None:
        update["agg_records"] = {m: v for m, v in row.agg_records.items() if m in keep}
    return row.model_copy(update=update)


def _check_collection(
    kept: Sequence[tuple[str, int, BankRow]],
    source: str,
    split: str | None,
    wanted: Sequence[str] | None,
    seen_models: set[str],
) -> None:
    """Check the loaded rows together: requested models present, no empty row, answers exist."""
    where = "" if split is None else f" of split {split!r}"
    if wanted is not None:
        missing = [m for m in wanted if m not in seen_models]
        if missing:
            raise BankFormatError(
                f"requested model {missing[0]!r} appears in no row{where}"
                f"{_and_more(len(missing) - 1)}; models present: {_listing(sorted(seen_models))}",
                path=source,
            )
        for name, line, row in kept:
            if not row.records:
                reason = f"no score for any requested model ({_listing(wanted)})"
                raise BankFormatError(reason, path=name, line=line, field="records")
    scored: Counter[str] = Counter()
    answered: set[str] = set()
    for _, _, row in kept:
        scored.update(row.records.keys())
        answered.update(row.raw_output)
    silent = [m for m in scored if m not in answered]
    if silent:
        raise BankFormatError(
            f"model {silent[0]!r} answers in no row{where} (scored in "
            f"{_n_rows(scored[silent[0]])}, raw_output in none){_and_more(len(silent) - 1)}",
            path=source,
        )


def _n_rows(count: int) -> str:
    """Return ``"1 row"`` or ``"N rows"``."""
    return f"{count} row" if count == 1 else f"{count} rows"


def _and_more(count: int) -> str:
    """Return ``" (and N more)"`` for a positive count, else an empty string."""
    return f" (and {count} more)" if count > 0 else ""


def _listing(names: Sequence[str]) -> str:
    """Join names for a message, cut after a few."""
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LIST_LIMIT else "")
