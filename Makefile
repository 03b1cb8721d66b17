# The two set-up commands of README.md: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# The CPU build that lies on the dev/CI machines; GPU users: make TORCH=torch (or keep your own venv).
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/alexnet-pipe demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/alexnet-pipe bench prepare
	$(BIN)/alexnet-pipe bench loader

clean:
	rm -rf $(VENV) alexnet-data
