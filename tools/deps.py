"""The dependency versions: which the last green test run used (constraints/tested.txt), which are installed here, and
upgrading to the newest ones pyproject.toml's bounds allow.

Usage: python tools/deps.py show       print the tested versions and where this environment differs (`make test`)
       python tools/deps.py upgrade    every dependency of the core, its extras and the plugins to the newest allowed
                                       version; torch stays as installed (its build is chosen by install_torch.py)
       python tools/deps.py record     write this environment's versions to constraints/tested.txt (`make test-latest`
                                       does after the tests pass)

`pip install -c constraints/tested.txt ...` reproduces the tested set on a machine like the one that recorded it.
"""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTED = ROOT / "constraints" / "tested.txt"
EXTRAS = "default-model,server,test,bench"
# the packages whose versions decide whether fastgen works; printed first and named in differences
KEY = ("torch", "transformers", "tokenizers", "huggingface-hub", "safetensors", "pluggy", "kernels", "fastapi",
       "uvicorn", "pydantic", "gguf", "accelerate", "triton", "numpy")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed() -> dict[str, str]:
    """name -> version of every distribution here, fastgen's own (editable checkouts) left out."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name and not name.startswith("fastgen") and name not in ("pip", "setuptools", "wheel"):
            out[name] = dist.version
    return out


def read_tested() -> dict[str, str]:
    if not TESTED.is_file():
        return {}
    pins = {}
    for line in TESTED.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def show() -> int:
    tested, here = read_tested(), installed()
    if not tested:
        print(f"deps: no record of tested versions ({TESTED.relative_to(ROOT)} is missing)")
        return 0
    header = next((line for line in TESTED.read_text().splitlines() if line.startswith("#")), "")
    print(f"deps: the last green test run ({header.lstrip('# ')}) used " +
          ", ".join(f"{k} {tested[k]}" for k in KEY if k in tested))
    differ = [f"{k} {tested.get(k, '-')} -> {here.get(k, '-')}" for k in sorted(set(tested) | set(here))
              if tested.get(k) != here.get(k)]
    key_differ = [d for d in differ if d.split()[0] in KEY]
    if differ:
        print(f"deps: this environment differs in {len(differ)} package(s)" +
              (f", among them {', '.join(key_differ)}" if key_differ else ""))
    else:
        print("deps: this environment has exactly the tested versions")
    return 0


def upgrade() -> int:
    plugins = sorted(str(p) for p in (ROOT / "plugins").glob("fastgen-*") if (p / "pyproject.toml").is_file())
    torch = installed().get("torch")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as hold:
        if torch:
            hold.write(f"torch=={torch}\n")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--upgrade-strategy", "eager",
           "-c", hold.name, "-e", f"{ROOT}[{EXTRAS}]", *[a for p in plugins for a in ("-e", p)]]
    print("deps: upgrading to the newest allowed versions" + (f" (torch {torch} kept)" if torch else ""), flush=True)
    r = subprocess.run(cmd)
    Path(hold.name).unlink()
    if r.returncode == 0:
        here = installed()
        print("deps: now " + ", ".join(f"{k} {here[k]}" for k in KEY if k in here))
    return r.returncode


def record() -> int:
    import platform
    here = installed()
    TESTED.parent.mkdir(exist_ok=True)
    lines = [f"# {platform.system()} {platform.machine()}, Python {platform.python_version()}",
             "# the versions of the last green `make test-latest` (written by tools/deps.py record)"]
    lines += [f"{k}=={v}" for k, v in sorted(here.items())]
    TESTED.write_text("\n".join(lines) + "\n")
    print(f"deps: wrote {len(here)} versions to {TESTED.relative_to(ROOT)}")
    return 0


COMMANDS = {"show": show, "upgrade": upgrade, "record": record}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python tools/deps.py {{{'|'.join(COMMANDS)}}}")
    sys.exit(COMMANDS[sys.argv[1]]())
