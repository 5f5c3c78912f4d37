"""Run a script of Triton kernels under Triton's interpreter in a fresh process (TRITON_INTERPRET must be set
before Triton is first imported) and return the JSON object it prints last: its errors by case."""
import json
import subprocess
import sys
from pathlib import Path


def run_interpreted(script: str) -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).parent / script)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_small(errors: dict, name: str, float16_tol: float) -> None:
    """Case ``name`` of ``run_interpreted``'s errors ran (a float, not an error message) and is within tolerance:
    ``float16_tol`` for float16 cases, 1e-6 for float32."""
    err = errors[name]
    assert isinstance(err, float), f"{name}: {err}"
    assert err < (float16_tol if name.endswith("float16") else 1e-6), f"{name}: relative error {err}"
