# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR := outputs/sweeps/demo

.PHONY: install demo test test-fast bench clean lock

install: $(STAMP)

# torch is pinned to the CPU wheel that pip finds offline here; constraints.txt pins the rest.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/xlt-run -m experiment=demo && \
	$(BIN)/xlt-report $(DEMO_DIR) && \
	echo "demo wall time: $$(( $$(date +%s) - start )) s"

test: $(STAMP)  # the 25 slowest tests are listed at the end: the suite's time budget is about 20 minutes
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/eval_throughput.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/soft_prompt_throughput.py
	$(BIN)/python bench/launch_overhead.py --jobs 50
	$(BIN)/python bench/sft_throughput.py
	$(BIN)/python bench/generation_throughput.py --threads 1
	$(BIN)/python bench/partial_layers.py
	$(BIN)/python bench/layer_swap.py
	$(BIN)/python bench/partition_sft.py
	$(BIN)/python bench/rag_pipeline.py

# Refresh constraints.txt from the current environment (after changing dependencies).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^xlt.runner' > constraints.txt

clean:
	rm -rf $(VENV) .cache outputs/runs outputs/sweeps
