"""Bank row schema: one past query with every model's score, usage and answer.

A row follows the format of the public JiSi data (METHOD.md, section 0). Validation is strict
about numbers (a score is a real number in [0, 1], never a bool, a string or NaN) and every
failure can be turned into a :class:`BankFormatError` that names the file, the line and the
dotted field path.
"""

import math
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jisi_graph.text import first_lone_surrogate

_REPR_LIMIT = 60


def _short(value: Any) -> str:
    """Return a repr of ``value`` cut to a readable length (only built when an error occurs)."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _is_number(value: Any) -> bool:
    """Tell whether ``value`` is a real int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_score(value: Any) -> float:
    """Validate one score: a finite real number in [0, 1]."""
    if isinstance(value, bool):
        raise PydanticCustomError(
            "score_type", "score must be a number, not a bool ({got})", {"got": _short(value)}
        )
    if isinstance(value, int):
        if value < 0 or value > 1:
            raise PydanticCustomError(
                "score_range", "score {got} is outside [0, 1]", {"got": _short(value)}
            )
        return float(value)
    if not isinstance(value, float):
        raise PydanticCustomError(
            "score_type", "score must be a number, got {got}", {"got": _short(value)}
        )
    if not math.isfinite(value):
        raise PydanticCustomError(
            "score_finite", "score {got} is not a finite number", {"got": _short(value)}
        )
    if not 0.0 <= value <= 1.0:
        raise PydanticCustomError(
            "score_range", "score {got} is outside [0, 1]", {"got": _short(value)}
        )
    return value


def _check_tokens(value: Any) -> int:
    """Validate one token count: a non-negative int (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError(
            "tokens_type", "token count must be an integer, got {got}", {"got": _short(value)}
        )
    if value < 0:
        raise PydanticCustomError(
            "tokens_negative", "token count {got} is negative", {"got": _short(value)}
        )
    return value


def _check_cost(value: Any) -> float | None:
    """Validate a cost: null, or a finite non-negative number."""
    if value is None:
        return None
    if not _is_number(value):
        raise PydanticCustomError(
            "cost_type", "cost must be a number or null, got {got}", {"got": _short(value)}
        )
    if isinstance(value, int) and value < 0:
        raise PydanticCustomError("cost_negative", "cost {got} is negative", {"got": _short(value)})
    cost = float(value)
    if not math.isfinite(cost):
        raise PydanticCustomError(
            "cost_finite", "cost {got} is not a finite number", {"got": _short(value)}
        )
    if cost < 0:
        raise PydanticCustomError("cost_negative", "cost {got} is negative", {"got": _short(value)})
    return cost


def _check_query(value: Any) -> str:
    """Validate the query: a string with some non-blank text."""
    if not isinstance(value, str):
        raise PydanticCustomError(
            "query_type", "query must be a string, got {got}", {"got": _short(value)}
        )
    if not value.strip():
        raise PydanticCustomError("query_empty", "query is empty", {})
    at = first_lone_surrogate(value)
    if at is not None:
        raise PydanticCustomError(
            "query_unicode",
            "query is not valid Unicode text: an unpaired surrogate at character {at}",
            {"at": at},
        )
    return value


def _check_index(value: Any) -> str | int | None:
    """Validate the row's index: a string, an int (not a bool) or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError(
        "index_type",
        "index must be a string, an integer or null, got {got}",
        {"got": _short(value)},
    )


def _check_records(value: dict[str, float]) -> dict[str, float]:
    """Require at least one model's score in ``records``."""
    if not value:
        raise PydanticCustomError("records_empty", "records is empty: no model has a score", {})
    return value


Score = Annotated[float, PlainValidator(_check_score)]
TokenCount = Annotated[int, PlainValidator(_check_tokens)]
Cost = Annotated[float | None, PlainValidator(_check_cost)]
StrictText = Annotated[str, Field(strict=True)]


class Usage(BaseModel):
    """Token usage and cost of one model's answer to one query."""

    model_config = ConfigDict(extra="ignore")

    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    cost: Cost = None


class BankRow(BaseModel):
    """One bank query: its text, each model's score, usage and answer, and the gold answer.

    A model absent from a row is missing (never answered), not wrong. Extra fields are ignored.
    """

    model_config = ConfigDict(extra="ignore")

    query: Annotated[str, PlainValidator(_check_query)]
    dataset: StrictText = "default"
    index: Annotated[str | int | None, PlainValidator(_check_index)] = None
    split: StrictText | None = None
    records: Annotated[dict[str, Score], AfterValidator(_check_records)]
    usages: dict[str, Usage] = Field(default_factory=dict)
    raw_output: dict[str, StrictText] = Field(default_factory=dict)
    gt: Any = None
    agg_records: dict[str, Score] | None = None

    @model_validator(mode="after")
    def _entries_have_scores(self) -> Self:
        """Reject a usage or an answer for a model that has no score in ``records``."""
        for name, table in (("usages", self.usages), ("raw_output", self.raw_output)):
            for model in table:
                if model not in self.records:
                    raise PydanticCustomError(
                        "entry_without_score",
                        "model {model} has an entry in {name} but no score in records",
                        {"model": repr(model), "name": name, "field": f"{name}.{model}"},
                    )
        return self


class BankFormatError(ValueError):
    """A bank file that breaks the row format, located by file, 1-based line and field."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(self._render())

    def _render(self) -> str:
        """Build ``PATH, line N, field 'F': reason``, leaving out the parts that are unknown."""
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep the error picklable despite its keyword-only constructor."""
        return (_rebuild_error, (self.reason, self.path, self.line, self.field))

    @classmethod
    def from_validation_error(
        cls, exc: ValidationError, *, path: str | Path | None = None, line: int | None = None
    ) -> "BankFormatError":
        """Turn pydantic's error into a short one: the first problem, and how many more."""
        first = exc.errors(include_url=False)[0]
        ctx = first.get("ctx") or {}
        field = ctx.get("field") or ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "missing":
            reason = "required field is missing"
        elif first["type"] in _PLAIN_TYPES:
            reason = f"{first['msg']}, got {_short(first['input'])}"
        else:
            reason = first["msg"]
        more = exc.error_count() - 1
        if more:
            reason += f" (and {more} more error{'s' if more > 1 else ''} in this row)"
        return cls(reason, path=path, line=line, field=field)


_PLAIN_TYPES = frozenset({"string_type", "dict_type", "model_type", "model_attributes_type"})


def _rebuild_error(
    reason: str, path: str | None, line: int | None, field: str | None
) -> BankFormatError:
    """Recreate a :class:`BankFormatError` when unpickling."""
    return BankFormatError(reason, path=path, line=line, field=field)


def validate_row(data: Any, *, path: str | Path | None = None, line: int | None = None) -> BankRow:
    """Validate one decoded JSON value as a :class:`BankRow`, or raise :class:`BankFormatError`."""
    if not isinstance(data, dict):
        kind = "null" if data is None else type(data).__name__
        raise BankFormatError(f"row must be a JSON object, got {kind}", path=path, line=line)
    try:
        return BankRow.model_validate(data)
    except ValidationError as exc:
        raise BankFormatError.from_validation_error(exc, path=path, line=line) from None
