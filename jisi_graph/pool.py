"""The model pool: OpenAI-compatible endpoints, their prices, and lazily created chat models.

A pool file (YAML) lists the models by the names the bank knows them by:

    defaults:                      # optional, applied to every model
      base_url: http://127.0.0.1:8000/v1
      api_key_env: OPENAI_API_KEY
    models:
      - name: Mistral-Large-2      # as in the bank
        model: mistral-large-2407  # the model id at the endpoint
        input_price: 2.0           # USD per million input tokens
        output_price: 6.0          # USD per million output tokens
        aggregator: true           # may aggregate (default true)

No client is created and no key is read until a model is called.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class PoolError(ValueError):
    """A pool that cannot be used: bad file, unknown field, missing key variable."""


class ModelSpec(BaseModel):
    """One model of the pool: where it lives, what it costs, and whether it may aggregate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="The model's name in the bank")
    model: str | None = Field(default=None, description="Model id at the endpoint (default: name)")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the key"
    )
    input_price: float = Field(default=0.0, ge=0, description="USD per million input tokens")
    output_price: float = Field(default=0.0, ge=0, description="USD per million output tokens")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    aggregator: bool = Field(default=True, description="Whether this model may aggregate")

    @property
    def model_id(self) -> str:
        """The id sent to the endpoint."""
        return self.model or self.name

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD cost of one call at this model's prices."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6


class PoolSpec(BaseModel):
    """A pool file's content."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> PoolSpec:
        names = [spec.name for spec in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return self


ChatFactory = Callable[[ModelSpec], BaseChatModel]


class Pool:
    """Model specs plus a factory that makes each chat model on first use."""

    def __init__(self, spec: PoolSpec, factory: ChatFactory | None = None) -> None:
        """Wrap a validated spec; `factory` defaults to `openai_chat_model`."""
        self.spec = spec
        self._factory = factory or openai_chat_model
        self._models: dict[str, BaseChatModel] = {}

    @property
    def names(self) -> list[str]:
        """Model names in pool order."""
        return [spec.name for spec in self.spec.models]

    def model_spec(self, name: str) -> ModelSpec:
        """The spec of a model, with a clear error for an unknown one."""
        for spec in self.spec.models:
            if spec.name == name:
                return spec
        raise PoolError(f"model {name!r} is not in the pool ({', '.join(self.names)})")

    def chat_model(self, name: str) -> BaseChatModel:
        """The chat model for `name`, created on first use."""
        if name not in self._models:
            self._models[name] = self._factory(self.model_spec(name))
        return self._models[name]

    def missing_keys(self) -> list[str]:
        """Names (never values) of key variables the pool needs that are not set."""
        needed = {spec.api_key_env for spec in self.spec.models if spec.api_key_env}
        return sorted(name for name in needed if not os.environ.get(name))

    @classmethod
    def from_file(cls, path: str | Path, factory: ChatFactory | None = None) -> Pool:
        """Read a YAML pool file (see the module docstring)."""
        return cls(load_pool_spec(path), factory)

    @classmethod
    def from_models(cls, models: Sequence[ModelSpec], factory: ChatFactory | None = None) -> Pool:
        """A pool built in code."""
        return cls(PoolSpec(models=list(models)), factory)


def load_pool_spec(path: str | Path) -> PoolSpec:
    """Parse and validate a pool file; errors name the file and the field."""
    file = Path(path)
    if not file.is_file():
        raise PoolError(f"pool file {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PoolError(f"pool file {file} is not valid YAML: {error}") from None
    if not isinstance(raw, dict) or "models" not in raw:
        raise PoolError(f"pool file {file} must be a mapping with a 'models' list")
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise PoolError(f"pool file {file}: 'defaults' must be a mapping")
    models = raw.get("models")
    if isinstance(models, list):
        raw["models"] = [
            {**defaults, **entry} if isinstance(entry, dict) else entry for entry in models
        ]
    try:
        return PoolSpec.model_validate(raw)
    except ValidationError as error:
        raise PoolError(f"pool file {file}: {_describe(error, raw)}") from None


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    problems = []
    for item in error.errors():
        location = list(item["loc"])
        if len(location) >= 2 and location[0] == "models" and isinstance(location[1], int):
            entry = raw["models"][location[1]]
            name = entry.get("name") if isinstance(entry, dict) else None
            label = f"model {name!r}" if name else f"models[{location[1]}]"
            field = ".".join(str(part) for part in location[2:]) or "entry"
        else:
            label, field = "pool", ".".join(str(part) for part in location)
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{label}, field {field!r}: {message}")
    return "; ".join(problems)


def openai_chat_model(spec: ModelSpec) -> BaseChatModel:
    """A `ChatOpenAI` for an OpenAI-compatible endpoint; the key is read from its variable now.

    Retries and timeouts are handled by the caller (`calls.call_model`), so the client makes a
    single attempt per call.
    """
    from langchain_openai import ChatOpenAI

    key = "not-needed"
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env, "")
        if not key:
            raise PoolError(
                f"environment variable {spec.api_key_env} (the key of model {spec.name!r}) "
                "is not set"
            )
    options: dict[str, Any] = {"stream_usage": True, "max_retries": 0}
    if spec.temperature is not None:
        options["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        options["max_tokens"] = spec.max_tokens
    return ChatOpenAI(model=spec.model_id, base_url=spec.base_url, api_key=key, **options)
