# The two set-up commands of README.md: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# torch from PyPI (on Linux the CUDA build, ~2.7 GB with its nvidia-* wheels) unless the venv already has one;
# the dev/CI machines hold the CPU wheel of this version locally. CPU build elsewhere:
# make TORCH_INDEX=https://download.pytorch.org/whl/cpu install
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
BIN    := $(VENV)/bin

.PHONY: install demo test bench mutation clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)   # a venv made beforehand (with a CUDA torch) is kept
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/alexnet-pipe demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/alexnet-pipe bench prepare
	$(BIN)/alexnet-pipe bench loader

# Not in CI: minutes to an hour per group on 2 cores (docs/testing.md). MUTATION_GROUPS="loop optim" for some
# (not GROUPS: bash keeps that name for itself); MUTATION_CHILDREN test processes at a time (machines are shared).
MUTATION_CHILDREN ?= 2
mutation: install
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[test,mutation]'
	$(BIN)/python tools/mutation.py --max-children $(MUTATION_CHILDREN) $(MUTATION_GROUPS)

clean:
	rm -rf $(VENV) alexnet-data .mutation mutants
