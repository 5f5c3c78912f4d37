"""The Triton attention kernels (paged prefill and paged decode) on the CPU under Triton's interpreter,
against the float64 reference, on random ragged batches: chunks that start mid-block or on a block edge,
fresh prompts, GQA / MQA, head_dim 80/96, sliding windows whose edge falls inside a tile, strided queries,
decodes whole or split over their context (flash-decoding) and merged; an exact step's split of the prompt
chunks between SDPA (whole prompts) and the Triton kernel (the rest).
The same kernels are compiled and compared on a GPU by tests/gpu/test_attention_gpu.py; here their index
arithmetic and masking are checked on every CI run. bf16 is left to the GPU (numpy, which the interpreter
computes with, has no bfloat16). Skipped where Triton is not installed."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed")
sys.path.insert(0, str(Path(__file__).parent))
from attention_interpreted import CASES  # noqa: E402
from interpreted import assert_small, run_interpreted  # noqa: E402

NAMES = [f"{kind}/{c}/{dt}" for c in CASES for kind, dt in
         (("prefill", "float32"), ("prefill", "float16"), ("mixed", "float32"), ("mixed-decode-rows", "float32"))]
NAMES.append("prefill/strided-q/float32")
NAMES += [f"exact-step{t}/{c}/float32" for c in CASES if any(start == 0 for start, _ in CASES[c][5])
          for t in ("", "-read-back")]
NAMES += [f"decode/{c}-{n}/float32" for c in ("split-mha-d80", "split-gqa-window", "split-mqa", "split-mha-window")
          for n in (1, 2, 8)]


@pytest.fixture(scope="module")
def errors():
    return run_interpreted("attention_interpreted.py")


@pytest.mark.parametrize("name", NAMES)
def test_kernel_matches_reference(errors, name):
    assert_small(errors, name, float16_tol=2e-3)
