# Everything installs into .venv; torch is pinned here (CPU build on these machines) and ranged in setup.cfg.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/qformer-budget demo --out $(DEMO_OUT)

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache *.egg-info
