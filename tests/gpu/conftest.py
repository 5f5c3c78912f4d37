import sys
from pathlib import Path

# the helpers next to these tests (agreement.py, tiny_configs.py) import as plain modules
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))       # tests/attention_cases.py, shared with CPU tests

import contextlib  # noqa: E402

import pytest  # noqa: E402


def plan_without(name: str):
    """A kernel plan (the default otherwise) whose operation holding the kernel ``name`` runs the next kernel of its
    order instead (``rms_norm_vec`` -> ``rms_norm``), or its reference when ``name`` is the last one."""
    from fastgen_core import kernels
    from fastgen_core.ops import OPS
    ops = dict(OPS)
    phi = pytest.importorskip("fastgen_phi.model")
    ops.update(phi.PhiForCausalLM.kernel_ops)
    for op, ks in ops.items():
        names = [k.name for k in ks]
        if name in names:
            rest = names[names.index(name) + 1:]
            return kernels.cuda_plan({op: rest[0]}, extra_ops=phi.PhiForCausalLM.kernel_ops)
    raise KeyError(f"no operation has a kernel {name!r}")


@pytest.fixture
def switches():
    """``switches(name)`` leaves the kernel ``name`` out for the rest of the test ("" leaves everything in)."""
    from fastgen_core import kernels
    with contextlib.ExitStack() as stack:
        def off(name: str) -> None:
            if name:
                stack.enter_context(kernels.plan_scope(plan_without(name)))
        yield off
