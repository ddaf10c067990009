# jisi-graph: set-up, the main job and the tests.
# PyTorch is pinned to the CPU build (torch==2.13.0): a plain `torch` pulls several GB of CUDA.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
BANKS ?= banks
OUT ?= out
TORCH_PIN := torch==2.13.0

OPEN_POOL := Llama-3.1-405B-Inst@sambanova,Meta-Llama-3.1-70B-Instruct,Qwen2-72B-Instruct,Mistral-Large-2,deepseek-v2.5-0908,Athene-70B,gemma-2-9b-it,Yi-1.5-34B-Chat,Meta-Llama-3-70B-Instruct,Phi-3.5-mini-instruct
REFERENCES := gpt-4o-2024-08-06,claude-3-5-sonnet-20240620,o1-mini-2024-09-12
ZEROEVAL := $(DATA)/zeroeval_gsm8k_math.jsonl.gz
ROUTERBENCH := $(DATA)/routerbench_subset.jsonl.gz

.PHONY: install eval eval-routerbench test lint clean-banks

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The main job: JiSi on the ZeroEval test split with the open-weight pool, against the baselines.
eval: install $(BANKS)/zeroeval-open/manifest.json
	@mkdir -p $(OUT)
	$(BIN)/jisi eval --data $(ZEROEVAL) --bank $(BANKS)/zeroeval-open --pool "$(OPEN_POOL)" \
		--references "$(REFERENCES)" --json $(OUT)/zeroeval.json \
		--markdown $(OUT)/zeroeval.md --plot $(OUT)/zeroeval.png

eval-routerbench: install $(BANKS)/routerbench/manifest.json
	@mkdir -p $(OUT)
	$(BIN)/jisi eval --data $(ROUTERBENCH) --bank $(BANKS)/routerbench \
		--json $(OUT)/routerbench.json --markdown $(OUT)/routerbench.md --plot $(OUT)/routerbench.png

$(BANKS)/zeroeval-open/manifest.json: | install
	$(BIN)/jisi bank build $(ZEROEVAL) --out $(BANKS)/zeroeval-open --models "$(OPEN_POOL)" --force

$(BANKS)/routerbench/manifest.json: | install
	$(BIN)/jisi bank build $(ROUTERBENCH) --out $(BANKS)/routerbench --force

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-banks:
	rm -rf $(BANKS)
