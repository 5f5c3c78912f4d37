import subprocess
import sys

import pytest

from fastgen_core.engine.kv_cache import BlockAllocator


def test_allocate_and_free_round_trip():
    a = BlockAllocator(8, 4)
    got = a.allocate(3)
    assert len(set(got)) == 3 and a.num_free == 5 and a.num_used == 3
    a.free(got)
    assert a.num_free == 8 and a.usage == 0


def test_check_act_pairs():
    a = BlockAllocator(4, 16)
    assert a.can_allocate(4) and not a.can_allocate(5)
    with pytest.raises(RuntimeError, match="only 4 free"):
        a.allocate(5)
    table: list[int] = []
    assert a.blocks_to_hold(table, 33) == 3
    a.grow(table, 33)
    assert len(table) == 3 and a.blocks_to_hold(table, 48) == 0 and a.blocks_to_hold(table, 49) == 1
    assert not a.can_grow(table, 16 * 5 + 1)


def test_double_free_is_refused():
    a = BlockAllocator(2, 4)
    b = a.allocate(1)
    a.free(b)
    with pytest.raises(RuntimeError, match="freed twice"):
        a.free(b)


@pytest.mark.parametrize("bad", [(0, 4), (4, 0)])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        BlockAllocator(*bad)


BOOKKEEPING_PROBE = """
import importlib.util, sys, types, pathlib
root = pathlib.Path(sys.argv[1])
# load the three modules by path under a stand-in package: fastgen_core/__init__ itself imports torch
for name, path in (("fgc", root), ("fgc.engine", root / "engine")):
    pkg = types.ModuleType(name); pkg.__path__ = [str(path)]; sys.modules[name] = pkg
for m in ("sequence", "kv_cache", "scheduler"):
    spec = importlib.util.spec_from_file_location("fgc.engine." + m, root / "engine" / (m + ".py"))
    mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
print("torch" in sys.modules)
"""


def test_bookkeeping_imports_no_torch():
    from pathlib import Path

    import fastgen_core
    root = Path(fastgen_core.__file__).parent
    out = subprocess.run([sys.executable, "-c", BOOKKEEPING_PROBE, str(root)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_gpu_kv_budget_is_this_process_share_of_the_card():
    """gpu_memory_fraction is the share of the card one engine may use (weights and activations included),
    so replicas sharing a GPU each get theirs; a share others already hold is refused, naming the numbers."""
    import pytest
    from fastgen_core.engine.kv_cache import GIB, gpu_kv_budget
    total, weights, act = 80 * GIB, 14 * GIB, 2 * GIB
    # one engine on an empty card (0.5 GiB of CUDA context outside torch)
    assert gpu_kv_budget(total, total - GIB // 2 - weights, weights, 0.9, act) == int(0.9 * total) - weights - act
    # the whole card: the CUDA context's half GiB comes out of the share instead of failing
    assert gpu_kv_budget(total, total - GIB // 2 - weights, weights, 1.0, act) == total - GIB // 2 - weights - act
    # two replicas on one GPU at 0.45: the second sees the first's 36 GiB gone and still gets its own share
    first = gpu_kv_budget(total, total - GIB // 2 - weights, weights, 0.45, act)
    free_for_second = total - GIB - 36 * GIB - weights
    second = gpu_kv_budget(total, free_for_second, weights, 0.45, act)
    assert first == second == int(0.45 * total) - weights - act > 0
    with pytest.raises(ValueError, match=r"gpu_memory_fraction=0.9 asks for 72.0 GiB of cuda:0's 80.0 GiB, but only "
                                         r"43.0 GiB are free.*other processes hold 37.0 GiB.*0.45 for each of two"):
        gpu_kv_budget(total, free_for_second, weights, 0.9, act, "cuda:0")
