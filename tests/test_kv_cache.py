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
