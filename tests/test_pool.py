"""The pool: YAML files, their errors, keys read lazily (and never shown), prices."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ScriptedChat
from langchain_openai import ChatOpenAI

from jisi_graph.pool import ModelSpec, Pool, PoolError, load_pool_spec, openai_chat_model

POOL_YAML = """\
defaults:
  base_url: http://127.0.0.1:8000/v1
  api_key_env: JISI_TEST_POOL_KEY
  input_price: 1.0
models:
  - name: Mistral-Large-2
    model: mistral-large-2407
    input_price: 2.0
    output_price: 6.0
  - name: gemma-2-2b-it
    output_price: 0.5
    temperature: 0.2
    max_tokens: 512
    aggregator: false
  - name: local
    base_url: http://127.0.0.1:9000/v1
    api_key_env: null
"""


def write(tmp_path: Path, text: str, name: str = "pool.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_pool_with_defaults(tmp_path: Path) -> None:
    pool = Pool.from_file(write(tmp_path, POOL_YAML))
    assert pool.names == ["Mistral-Large-2", "gemma-2-2b-it", "local"]
    mistral = pool.model_spec("Mistral-Large-2")
    assert mistral.base_url == "http://127.0.0.1:8000/v1"
    assert mistral.api_key_env == "JISI_TEST_POOL_KEY"
    assert mistral.model_id == "mistral-large-2407"
    assert (mistral.input_price, mistral.output_price) == (2.0, 6.0)  # the model's own wins
    assert mistral.aggregator is True and mistral.temperature is None
    gemma = pool.model_spec("gemma-2-2b-it")
    assert gemma.model_id == "gemma-2-2b-it"  # default: the name
    assert (gemma.input_price, gemma.output_price) == (1.0, 0.5)
    assert (gemma.temperature, gemma.max_tokens, gemma.aggregator) == (0.2, 512, False)
    local = pool.model_spec("local")
    assert local.base_url == "http://127.0.0.1:9000/v1"
    assert local.api_key_env is None


def test_pool_without_defaults(tmp_path: Path) -> None:
    spec = load_pool_spec(write(tmp_path, "models:\n  - name: a\n  - name: b\n"))
    assert [m.name for m in spec.models] == ["a", "b"]
    assert spec.models[0].base_url is None and spec.models[0].input_price == 0.0


def test_typo_names_the_model_and_the_field(tmp_path: Path) -> None:
    text = "models:\n  - name: a\n  - name: gpt-x\n    input_prize: 2.0\n"
    with pytest.raises(PoolError) as caught:
        load_pool_spec(write(tmp_path, text))
    message = str(caught.value)
    assert "model 'gpt-x'" in message
    assert "'input_prize'" in message
    assert "unknown field" in message
    assert "pool.yaml" in message


def test_bad_value_names_the_model_and_the_field(tmp_path: Path) -> None:
    text = "models:\n  - name: a\n    output_price: -1\n"
    with pytest.raises(PoolError, match=r"model 'a', field 'output_price'"):
        load_pool_spec(write(tmp_path, text))


def test_entry_without_a_name_is_located_by_position(tmp_path: Path) -> None:
    text = "models:\n  - name: a\n  - model: x\n"
    with pytest.raises(PoolError, match=r"models\[1\], field 'name'"):
        load_pool_spec(write(tmp_path, text))


def test_typo_in_defaults_is_named(tmp_path: Path) -> None:
    text = "defaults:\n  base_ulr: http://x\nmodels:\n  - name: a\n"
    with pytest.raises(PoolError, match=r"model 'a', field 'base_ulr': unknown field"):
        load_pool_spec(write(tmp_path, text))


def test_duplicate_names(tmp_path: Path) -> None:
    text = "models:\n  - name: a\n  - name: b\n  - name: a\n"
    with pytest.raises(PoolError, match="repeated: a"):
        load_pool_spec(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match=r"nope\.yaml does not exist"):
        load_pool_spec(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="is not valid YAML"):
        load_pool_spec(write(tmp_path, "models: [\n  - name: a\n"))


@pytest.mark.parametrize("text", ["- name: a\n", "just text\n", "other: 1\n", ""])
def test_not_a_pool_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(PoolError, match="must be a mapping with a 'models' list"):
        load_pool_spec(write(tmp_path, text))


def test_empty_model_list(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="'models'"):
        load_pool_spec(write(tmp_path, "models: []\n"))


def test_missing_key_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JISI_TEST_POOL_KEY", raising=False)
    monkeypatch.setenv("OTHER_SECRET", "sk-should-never-appear")
    pool = Pool.from_file(write(tmp_path, POOL_YAML))  # loading reads no key
    assert pool.missing_keys() == ["JISI_TEST_POOL_KEY"]
    with pytest.raises(PoolError) as caught:
        pool.chat_model("Mistral-Large-2")
    message = str(caught.value)
    assert "JISI_TEST_POOL_KEY" in message and "'Mistral-Large-2'" in message
    assert "sk-" not in message


def test_key_is_read_when_the_model_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JISI_TEST_POOL_KEY", "sk-test-value-123")
    pool = Pool.from_file(write(tmp_path, POOL_YAML))
    assert pool.missing_keys() == []
    model = pool.chat_model("gemma-2-2b-it")
    assert isinstance(model, ChatOpenAI)
    assert model.openai_api_key is not None
    assert model.openai_api_key.get_secret_value() == "sk-test-value-123"
    assert "sk-test-value-123" not in repr(model)
    assert model.model_name == "gemma-2-2b-it"
    assert model.openai_api_base == "http://127.0.0.1:8000/v1"
    assert (model.temperature, model.max_tokens, model.max_retries) == (0.2, 512, 0)
    assert pool.chat_model("gemma-2-2b-it") is model  # made once


def test_model_without_a_key_variable_needs_none() -> None:
    model = openai_chat_model(ModelSpec(name="local", base_url="http://127.0.0.1:9/v1"))
    assert isinstance(model, ChatOpenAI)


def test_unknown_model_is_a_pool_error() -> None:
    pool = Pool.from_models([ModelSpec(name="a"), ModelSpec(name="b")])
    with pytest.raises(PoolError, match=r"'c' is not in the pool \(a, b\)"):
        pool.model_spec("c")


def test_factory_is_lazy_and_called_once_per_model() -> None:
    made: list[str] = []

    def factory(spec: ModelSpec) -> ScriptedChat:
        made.append(spec.name)
        return ScriptedChat(model_name=spec.name)

    pool = Pool.from_models([ModelSpec(name="a"), ModelSpec(name="b")], factory=factory)
    assert made == []
    pool.chat_model("b")
    pool.chat_model("b")
    assert made == ["b"]


@pytest.mark.parametrize(
    ("input_price", "output_price", "tokens_in", "tokens_out", "cost"),
    [
        (2.0, 6.0, 1000, 500, 0.005),
        (0.15, 0.6, 1_000_000, 1_000_000, 0.75),
        (0.0, 0.0, 5000, 5000, 0.0),
        (3.0, 15.0, 0, 0, 0.0),
    ],
)
def test_prices_to_cost(
    input_price: float, output_price: float, tokens_in: int, tokens_out: int, cost: float
) -> None:
    spec = ModelSpec(name="m", input_price=input_price, output_price=output_price)
    assert spec.cost(tokens_in, tokens_out) == pytest.approx(cost, abs=1e-15)


def test_negative_price_is_refused() -> None:
    with pytest.raises(ValueError, match="input_price"):
        ModelSpec(name="m", input_price=-1.0)
