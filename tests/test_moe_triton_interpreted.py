"""The Triton MoE expert GEMMs (layers/moe_triton.py, decode-sized MoE steps) on the CPU under Triton's interpreter against the
every-expert float64 oracle: tails in N and K, an idle expert, one expert over several row blocks, top-1, and the
padded layout's bookkeeping. The GPU compiles and compares them in tests/gpu/test_moe_triton_gpu.py."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed")
sys.path.insert(0, str(Path(__file__).parent))
from interpreted import assert_small, run_interpreted  # noqa: E402
from moe_interpreted import CASES  # noqa: E402

NAMES = [f"{c}/{dt}" for c in CASES for dt in ("float32", "float16")]


@pytest.fixture(scope="module")
def errors():
    return run_interpreted("moe_interpreted.py")


@pytest.mark.parametrize("name", NAMES)
def test_expert_gemms_match_the_oracle(errors, name):
    assert_small(errors, name, float16_tol=3e-3)
