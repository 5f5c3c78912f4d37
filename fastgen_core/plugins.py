"""Plugin discovery: entry-point group "fastgen", loaded one at a time, failures recorded, never fatal.

Environment:
  FASTGEN_LOAD_PLUGINS=a,b     load only these entry-point names (empty string: none)
  FASTGEN_DISABLE_PLUGINS=a,b  skip these
  FASTGEN_STRICT_PLUGINS=1     re-raise a plugin's import error (for CI and plugin authors)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from . import hookspecs

GROUP = "fastgen"


@dataclass(frozen=True)
class PluginInfo:
    name: str          # entry-point name, also the pluggy plugin name
    dist: str          # distribution name ("fastgen-llama")
    version: str
    value: str         # "fastgen_llama.plugin"
    entry_point: bool = False   # loaded from an entry point (FASTGEN_DISABLE_PLUGINS can skip it)


@dataclass(frozen=True)
class PluginLoadFailure:
    name: str
    dist: str
    version: str
    error: str


@dataclass
class PluginSet:
    """A pluggy manager plus what we know about each plugin it holds (and those that failed)."""

    pm: pluggy.PluginManager
    loaded: dict[str, PluginInfo] = field(default_factory=dict)
    failed: list[PluginLoadFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # e.g. two distributions using one entry-point name

    def register(self, module, name: str, dist: str = "<local>", version: str = "", value: str = "",
                 entry_point: bool = False):
        """Register an already imported plugin object (tests, in-process plugins)."""
        self.pm.register(module, name=name)
        self.loaded[name] = PluginInfo(name, dist, version, value or getattr(module, "__name__", repr(module)),
                                       entry_point)

    def collect(self, hook: str, kind: type) -> tuple[list[tuple[object, PluginInfo]], list[str]]:
        """Call every plugin's ``hook(register)`` in registration order, each with a ``register`` callback of its
        own, so that everything registered is attributed to the plugin that registered it. Returns the
        (object, PluginInfo) pairs and one error line per plugin whose hook raised (the others keep working);
        ``register`` takes only instances of ``kind``."""
        found, errors = [], []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            info = self.loaded.get(impl.plugin_name) or PluginInfo(impl.plugin_name, impl.plugin_name, "", "")

            def register(obj, info=info):
                if not isinstance(obj, kind):
                    raise TypeError(f"register() takes a fastgen_core.{kind.__name__}, got {type(obj).__name__}")
                found.append((obj, info))
            try:
                impl.function(register=register)
            except Exception as exc:  # a plugin whose hook raises is reported, the others keep working
                errors.append(f"plugin {info.name!r} ({info.dist}) failed in {hook}: {type(exc).__name__}: {exc}")
        return found, errors


def _names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def get_plugin_set(autoload: bool = True) -> PluginSet:
    """A fresh plugin manager with the fastgen hookspecs; with autoload, every installed plugin."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    ps = PluginSet(pm)
    if autoload:
        _load_entry_points(ps)
    pm.check_pending()
    return ps


def _load_entry_points(ps: PluginSet) -> None:
    allow = _names("FASTGEN_LOAD_PLUGINS")
    deny = _names("FASTGEN_DISABLE_PLUGINS") or set()
    strict = os.environ.get("FASTGEN_STRICT_PLUGINS", "") not in ("", "0")
    seen: dict[str, str] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist else "<unknown>"
        version = ep.dist.version if ep.dist else ""
        if ep.name in seen:
            if seen[ep.name] != dist:
                ps.notes.append(f"entry point {ep.name!r} is provided by both {seen[ep.name]} and {dist}; "
                                f"only {seen[ep.name]}'s was loaded")
            continue
        seen[ep.name] = dist
        if (allow is not None and ep.name not in allow) or ep.name in deny:
            continue
        try:
            module = ep.load()
            ps.register(module, name=ep.name, dist=dist, version=version, value=ep.value, entry_point=True)
        except Exception as exc:  # a broken plugin must not take the others down
            if strict:
                raise
            failure = PluginLoadFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}")
            ps.failed.append(failure)
            warnings.warn(f"fastgen plugin {ep.name!r} from {dist} {version} failed to load: {failure.error}",
                          RuntimeWarning, stacklevel=2)
