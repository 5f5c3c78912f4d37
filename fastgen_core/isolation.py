"""Checks that a family plugin stays a plugin (offered to every plugin through ``fastgen_core.testing``):

- it imports from the core only the public API: ``fastgen_core`` (names in its ``__all__``) and
  ``fastgen_core.layers`` (names in its ``__all__``), plus ``fastgen_core.testing`` in its tests; everything
  else in the core may change without notice;
- it imports no other installed plugin's package, and names none in a lazy ``"module:attr"`` string
  (shared code belongs in the core);
- its ``plugin.py`` imports without torch or CuPy: every fastgen start-up imports every plugin's
  ``plugin.py``, so the heavy parts must be lazy ``"module:attr"`` strings.

What is checked is the import statements (parsed, not run) and one fresh interpreter importing
``<package>.plugin``. No torch is needed to import this module.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

PUBLIC_MODULES = ("fastgen_core", "fastgen_core.layers")
TEST_MODULES = PUBLIC_MODULES + ("fastgen_core.testing",)
LAZY_SPEC = re.compile(r"^([A-Za-z_]\w*)(?:\.\w+)*:\w+(?:\.\w+)*$")     # "fastgen_x.model:Class"
HEAVY = ("torch", "cupy")


@dataclass
class IsolationReport:
    """What ``check_plugin_isolation`` looked at (so a test can assert it looked at something)."""

    package: str
    package_dir: Path
    files: list[Path] = field(default_factory=list)       # every .py file whose imports were checked
    other_plugins: list[str] = field(default_factory=list)


def package_dir(package: str | Path) -> Path:
    """The directory of plugin package ``package``: a path to it, or an importable name (not imported)."""
    if isinstance(package, Path) or os.sep in str(package):
        path = Path(package).resolve()
        if not (path / "__init__.py").is_file():
            raise AssertionError(f"{path} is not a Python package directory (no __init__.py)")
        return path
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssertionError(f"package {package!r} cannot be found; install the plugin (pip install -e .) or "
                             "pass the path of its package directory")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def installed_plugin_packages() -> set[str]:
    """Top-level packages of every installed ``fastgen`` entry point ("fastgen_llama", ...)."""
    from importlib.metadata import entry_points
    return {ep.value.split(":")[0].split(".")[0] for ep in entry_points(group="fastgen")}


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of each import statement; relative imports are skipped."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def lazy_specs(path: Path) -> list[tuple[str, int]]:
    """String constants shaped like ModelFamily's lazy "module:attr" references."""
    return [(n.value, n.lineno) for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and LAZY_SPEC.match(n.value)]


def _public_names() -> dict[str, set[str]]:
    import fastgen_core
    import fastgen_core.layers
    return {"fastgen_core": set(fastgen_core.__all__), "fastgen_core.layers": set(fastgen_core.layers.__all__),
            "fastgen_core.testing": _declared_all("fastgen_core.testing")}


def _declared_all(module: str) -> set[str]:
    """The names in ``module``'s literal ``__all__``, read from its source (fastgen_core.testing imports this
    module, so importing it back here would make a cycle)."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{module} declares no literal __all__")


def import_problems(path: Path, allowed: tuple[str, ...], others: set[str], public: dict[str, set[str]],
                    shown: str | None = None) -> list[str]:
    """Each import of ``path`` that reaches past the public API or into another plugin, as a sentence."""
    where = shown or str(path)
    bad = []
    for module, names, line in imports_of(path):
        top = module.split(".")[0]
        if top in others:
            bad.append(f"{where}:{line} imports {module}, another plugin's package (shared code belongs in "
                       "fastgen_core.layers)")
        if top != "fastgen_core":
            continue
        if module not in allowed:
            bad.append(f"{where}:{line} imports {module}; a plugin may import only {list(allowed)}")
        elif names and set(names) - public[module] - {"*"}:
            bad.append(f"{where}:{line} imports {sorted(set(names) - public[module])} from {module}, which are "
                       f"not in {module}.__all__ (the public API)")
    for spec, line in lazy_specs(path):
        if LAZY_SPEC.match(spec).group(1) in others:
            bad.append(f"{where}:{line} names {spec!r}, in another plugin's package")
    return bad


def check_public_api(package: str | Path, tests: str | Path | None = None,
                     other_plugins: set[str] | None = None) -> IsolationReport:
    """Assert that every .py file of plugin package ``package`` (and of the ``tests`` directory, where
    ``fastgen_core.testing`` is allowed too) imports only the core's public API and no other plugin.
    ``other_plugins`` defaults to the packages of every other installed ``fastgen`` entry point."""
    pdir = package_dir(package)
    name = pdir.name
    others = (installed_plugin_packages() if other_plugins is None else set(other_plugins)) - {name}
    public = _public_names()
    report = IsolationReport(name, pdir, other_plugins=sorted(others))
    bad = []
    for root, allowed in ((pdir, PUBLIC_MODULES), (Path(tests) if tests is not None else None, TEST_MODULES)):
        if root is None:
            continue
        files = sorted(f for f in Path(root).rglob("*.py") if "build" not in f.relative_to(root).parts)
        if not files:
            raise AssertionError(f"{root} holds no .py files: nothing to check")
        for f in files:
            bad += import_problems(f, allowed, others, public)
        report.files += files
    assert not bad, f"plugin {name} reaches past fastgen's public API:\n  " + "\n  ".join(bad)
    return report


def check_plugin_import_is_cheap(package: str | Path, timeout: float = 120) -> None:
    """Import ``<package>.plugin`` in a fresh interpreter and assert it imported neither torch nor CuPy."""
    pdir = package_dir(package)
    if not (pdir / "plugin.py").is_file():
        raise AssertionError(f"{pdir} has no plugin.py (the hook implementations live there, cheap to import)")
    code = f"""
        import sys
        sys.path.insert(0, {str(pdir.parent)!r})   # works whether or not the plugin is installed
        import {pdir.name}.plugin
        print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})[:5]))
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGEN_")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, f"importing {pdir.name}.plugin failed:\n{proc.stderr[-3000:]}"
    heavy = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert heavy == "", (f"importing {pdir.name}.plugin imported {heavy}; name the model, config and weight map "
                         "as lazy 'module:attr' strings in ModelFamily instead of importing them in plugin.py")


def check_plugin_isolation(package: str | Path, tests: str | Path | None = None,
                           other_plugins: set[str] | None = None) -> IsolationReport:
    """Both checks: ``check_public_api`` and ``check_plugin_import_is_cheap``. Returns what was scanned."""
    report = check_public_api(package, tests, other_plugins)
    check_plugin_import_is_cheap(package)
    return report
