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
ZEROEVAL_BANK := $(BANKS)/zeroeval-open
ROUTERBENCH_BANK := $(BANKS)/routerbench

.PHONY: install eval eval-routerbench frontier test lint benchmarks clean-banks

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The main job: JiSi on the ZeroEval test split with the open-weight pool, calibrated on the
# bank's own rows, against the paper's configuration and the baselines.
eval: install $(ZEROEVAL_BANK)/calibration.json
	@mkdir -p $(OUT)
	$(BIN)/jisi eval --data $(ZEROEVAL) --bank $(ZEROEVAL_BANK) --pool "$(OPEN_POOL)" \
		--references "$(REFERENCES)" --json $(OUT)/zeroeval.json \
		--markdown $(OUT)/zeroeval.md --plot $(OUT)/zeroeval.png

eval-routerbench: install $(ROUTERBENCH_BANK)/calibration.json
	@mkdir -p $(OUT)
	$(BIN)/jisi eval --data $(ROUTERBENCH) --bank $(ROUTERBENCH_BANK) \
		--json $(OUT)/routerbench.json --markdown $(OUT)/routerbench.md --plot $(OUT)/routerbench.png

# Accuracy against cost: each method over its knob, on both files.
frontier: install $(ZEROEVAL_BANK)/calibration.json $(ROUTERBENCH_BANK)/calibration.json
	@mkdir -p $(OUT)
	$(BIN)/jisi eval --sweep --data $(ZEROEVAL) --bank $(ZEROEVAL_BANK) --pool "$(OPEN_POOL)" \
		--references "$(REFERENCES)" --json $(OUT)/zeroeval-sweep.json \
		--markdown $(OUT)/zeroeval-sweep.md --plot $(OUT)/zeroeval-sweep.png
	$(BIN)/jisi eval --sweep --data $(ROUTERBENCH) --bank $(ROUTERBENCH_BANK) \
		--json $(OUT)/routerbench-sweep.json --markdown $(OUT)/routerbench-sweep.md \
		--plot $(OUT)/routerbench-sweep.png

$(ZEROEVAL_BANK)/manifest.json: | install
	$(BIN)/jisi bank build $(ZEROEVAL) --out $(ZEROEVAL_BANK) --models "$(OPEN_POOL)" --force

$(ROUTERBENCH_BANK)/manifest.json: | install
	$(BIN)/jisi bank build $(ROUTERBENCH) --out $(ROUTERBENCH_BANK) --force

# Calibration: K-fold CV over the bank's own rows (never the test rows); a rebuilt bank is
# calibrated again.
%/calibration.json: %/manifest.json
	$(BIN)/jisi calibrate --bank $*

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

benchmarks: install $(ZEROEVAL_BANK)/manifest.json
	$(BIN)/python benchmarks/run_all.py

clean-banks:
	rm -rf $(BANKS)
