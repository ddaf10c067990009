"""The calibration stored with a bank, and how a run's context takes it in.

`jisi calibrate` (module `calibrate`) writes `calibration.json` into the bank directory: the
chosen knobs, the grid they were chosen from, the cross-validated figures that justified them and
the SHA-256 of the bank's `manifest.json`, so that a calibration never outlives the bank it was
made on. The file is not listed in the manifest, so it never disturbs the bank's own checksums.

A run uses a calibrated knob wherever its context does not set that knob itself and
`calibrated` is true; `calibrated=False` gives the paper's configuration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jisi_graph.bank.manifest import MANIFEST_NAME
from jisi_graph.context import JisiContext

CALIBRATION_NAME = "calibration.json"
CALIBRATION_VERSION = 1
CALIBRATED_KNOBS = (
    "query_coef",
    "switch_threshold",
    "probe_margin",
    "top_k",
    "candidate_source",
    "cost_weight",
    "support_k",
    "sample_n",
    "stop_on_agreement",
)
"""The knobs `jisi calibrate` chooses; every other knob keeps its default."""


class CalibrationError(ValueError):
    """A calibration file that cannot be used: unreadable, invalid, or made on another bank."""


class Calibration(BaseModel):
    """The content of `calibration.json`."""

    model_config = ConfigDict(extra="forbid")

    version: int = CALIBRATION_VERSION
    manifest_sha256: str = Field(description="SHA-256 of the bank's manifest.json it was made on")
    pool: list[str] = Field(description="The pool the knobs were chosen for")
    knobs: dict[str, Any] = Field(description="The chosen knobs, by JisiContext field name")
    objective: dict[str, Any] = Field(default_factory=dict, description="Target and constraints")
    chosen: dict[str, Any] = Field(default_factory=dict, description="CV figures of the choice")
    baselines: dict[str, Any] = Field(default_factory=dict, description="CV figures of baselines")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="The knob values tried")
    fixed: dict[str, Any] = Field(default_factory=dict, description="Knobs held at these values")
    top: list[dict[str, Any]] = Field(default_factory=list, description="Best grid points")
    frontier: list[dict[str, Any]] = Field(
        default_factory=list, description="CV accuracy-cost frontier over the grid"
    )
    folds: int = 5
    seed: int = 42
    rows: int = 0
    seconds: float = 0.0
    created_at: str = ""
    notes: list[str] = Field(default_factory=list)


def manifest_checksum(bank_dir: str | Path) -> str:
    """SHA-256 of a bank directory's manifest.json."""
    return hashlib.sha256((Path(bank_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def write_calibration(bank_dir: str | Path, calibration: Calibration) -> Path:
    """Write `calibration.json` into the bank directory (atomically) and return its path."""
    path = Path(bank_dir) / CALIBRATION_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(calibration.model_dump_json(indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def load_calibration(bank_dir: str | Path | None) -> Calibration | None:
    """The bank's calibration, or None when it has none.

    Raises CalibrationError when the file is not valid JSON, does not have the expected fields,
    names a knob that is not calibrated or a value JisiContext refuses, or was made on a bank
    whose manifest differs from this one (rebuilt since).
    """
    if bank_dir is None:
        return None
    path = Path(bank_dir) / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        calibration = Calibration.model_validate(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CalibrationError(
            f"{path} is not valid JSON ({error}); rerun `jisi calibrate` or delete it"
        ) from None
    except ValidationError as error:
        raise CalibrationError(
            f"{path} is not a calibration file ({error.errors()[0]['msg']} at "
            f"{'.'.join(str(p) for p in error.errors()[0]['loc'])}); rerun `jisi calibrate`"
        ) from None
    if calibration.version != CALIBRATION_VERSION:
        raise CalibrationError(
            f"{path} has version {calibration.version}, this jisi-graph reads "
            f"{CALIBRATION_VERSION}; rerun `jisi calibrate`"
        )
    unknown = sorted(set(calibration.knobs) - set(CALIBRATED_KNOBS))
    if unknown:
        raise CalibrationError(f"{path} sets knobs that are not calibrated: {', '.join(unknown)}")
    try:
        JisiContext(**calibration.knobs)
    except ValidationError as error:
        raise CalibrationError(f"{path} holds an invalid knob value: {error}") from None
    manifest = Path(bank_dir) / MANIFEST_NAME
    if manifest.is_file() and calibration.manifest_sha256 != manifest_checksum(bank_dir):
        raise CalibrationError(
            f"{path} was made on another build of this bank (manifest checksum differs); "
            "rerun `jisi calibrate`"
        )
    return calibration


def apply_calibration(
    context: JisiContext,
    calibration: Calibration | None,
    active_models: Sequence[str] | None = None,
) -> tuple[JisiContext, dict[str, Any], str | None]:
    """The context a run uses: calibrated knobs wherever `context` does not set its own.

    Returns (effective context, the knobs taken from the calibration, why none were taken).
    Nothing is taken when `context.calibrated` is false, when there is no calibration, or when
    it was made for another pool than `active_models`. A knob the caller set explicitly (a field
    in `context.model_fields_set`) always wins.
    """
    if not context.calibrated:
        return context, {}, "calibrated=False: the paper's configuration"
    if calibration is None:
        return context, {}, "the bank has no calibration"
    if active_models is not None and sorted(active_models) != sorted(calibration.pool):
        return (
            context,
            {},
            "the bank was calibrated for another pool ("
            + ", ".join(calibration.pool)
            + "): paper configuration",
        )
    taken = {
        knob: value
        for knob, value in calibration.knobs.items()
        if knob not in context.model_fields_set
    }
    if not taken:
        return context, {}, "every calibrated knob is set by the caller"
    values = {name: getattr(context, name) for name in context.model_fields_set}
    effective = JisiContext(**{**values, **taken})
    return effective, taken, None
