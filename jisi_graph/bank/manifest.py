"""The bank's manifest: what was embedded, by which embedder, from which file, and checksums."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class BankMismatchError(ValueError):
    """A bank that cannot be used as asked: altered files, another embedder, another format."""


class EmbedderRecord(BaseModel):
    """The embedder a bank was built with."""

    model_config = ConfigDict(extra="forbid")

    id: str
    dim: int
    window: int | None = Field(description="Tokens kept per text (its last ones); None: unknown")
    answer_window: int | None = Field(
        default=None,
        description="Tokens kept per model answer (its last ones), when fewer than `window`; "
        "the probes' answers are cut the same way at query time. None: the whole window",
    )
    truncation: str = "left"
    runtime: str = Field(
        default="torch",
        description="Runtime that embedded the bank (torch, torch-bf16, openvino); not checked "
        "at load: every runtime of the same model gives the same vectors to about 1e-4",
    )


class SourceRecord(BaseModel):
    """The data file a bank was built from."""

    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str | None
    split: str | None
    limit: int | None = None


class FileRecord(BaseModel):
    """Size and checksum of one file of the bank directory."""

    model_config = ConfigDict(extra="forbid")

    bytes: int
    sha256: str


class BankManifest(BaseModel):
    """Everything needed to trust a bank directory before using it."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    embedder: EmbedderRecord
    models: list[str]
    datasets: list[str]
    rows: int
    answers: int = Field(description="Number of (row, model) answers embedded")
    distinct_texts: int = Field(description="Distinct texts actually embedded")
    source: SourceRecord
    built_at: str
    build_seconds: float = Field(
        description="Seconds spent embedding and building the arrays (loading and writing excluded)"
    )
    votable: dict[str, bool]
    votability: dict[str, dict[str, Any]] = Field(default_factory=dict)
    has_agg_records: bool = False
    answer_dtype: str = "float16"
    files: dict[str, FileRecord] = Field(default_factory=dict)
    jisi_graph_version: str = ""
