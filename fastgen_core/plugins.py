"""Plugin discovery: entry-point group "fastgen", loaded one at a time, failures recorded, never fatal.

Environment:
  FASTGEN_LOAD_PLUGINS=a,b     load only these entry-point names (empty string: none)
  FASTGEN_DISABLE_PLUGINS=a,b  skip these
  FASTGEN_STRICT_PLUGINS=1     re-raise a plugin's import error (for CI and plugin authors)

A plugin module declares the plugin API version it is written for as ``FASTGEN_PLUGIN_API = 3``; it is read
when its entry point is loaded (a plain attribute: no hook call, nothing imported).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import FastgenError

GROUP = "fastgen"

# The plugin API version of this core: raised when a change asks something new of plugins. Each version's
# one-line summary of what changed is what a plugin written for an older version is told.
PLUGIN_API_VERSION = 3
PLUGIN_API_CHANGES = {
    1: "the first: the register_model_families and resolve_model_family hooks, ModelFamily with lazy "
       "'module:attr' strings, models built as Model(config)",
    2: "the engine hands the model its tensor-parallel group on the config (config.tp); a model must pass "
       "tp=config.tp to the shared layers (RotaryAttention, GatedMLP, MLP, SparseMoE, CausalLM) or it is refused "
       "at tensor_parallel_size > 1 (it still runs at 1), and fastgen_core.parallel.current() knows no group",
    3: "kernels are chosen by the engine's kernel plan: fastgen_core.kernels.use(x, name) and kernels.allows(name) "
       "ask it; switched_off, switched_on, mode, exact_step, exact_prefill and OPT_IN are gone (no FASTGEN_KERNELS_OFF "
       "or _ON); a family declares its own operations and kernels in CausalLM.kernel_ops (fastgen_core.Kernel)",
}
# The oldest plugin API this core still loads. A plugin targeting a version in between loads with a warning:
# no change since stops it from working (version 2's is refused, naming the fix, only under tensor parallelism).
OLDEST_PLUGIN_API = 1
DECLARATION = "FASTGEN_PLUGIN_API"      # the module attribute a plugin declares its version in


@dataclass(frozen=True)
class PluginInfo:
    name: str          # entry-point name, also the pluggy plugin name
    dist: str          # distribution name ("fastgen-llama")
    version: str
    value: str         # "fastgen_llama.plugin"
    entry_point: bool = False   # loaded from an entry point (FASTGEN_DISABLE_PLUGINS can skip it)
    api: int | None = None      # the plugin API version it declares (FASTGEN_PLUGIN_API), None if it declares none


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
                                       entry_point, getattr(module, DECLARATION, None))

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


class PluginAPIError(FastgenError):
    """A plugin targets a plugin API version this core cannot load (newer than it, or too old)."""


def changes_since(version: int) -> str:
    """What changed in the plugin API after ``version``: "in N, summary" per later version."""
    return ". ".join(f"in {v}, {summary}" for v, summary in sorted(PLUGIN_API_CHANGES.items()) if v > version)


def check_plugin_api(module, plugin: str) -> tuple[int, str | None]:
    """The plugin API version ``module`` targets (1 when it declares none) and the warning to give, or None.
    Raises PluginAPIError when this core cannot load it. ``plugin`` names it in the warning."""
    declared = getattr(module, DECLARATION, None)
    if type(declared) is int and declared == PLUGIN_API_VERSION:
        return declared, None
    core = f"this fastgen-core{_release()} has plugin API {PLUGIN_API_VERSION}"
    declare = f"declare {DECLARATION} = {PLUGIN_API_VERSION} in {getattr(module, '__name__', plugin)}"
    if declared is None:
        return 1, (f"{plugin} declares no plugin API version, so it is taken to target plugin API 1; {core}. "
                   f"Changed since 1: {changes_since(1)}. A newer release of the plugin may declare one (its author: "
                   f"check it against these changes, then {declare}; docs/writing-a-plugin.md, 'Plugin API version')")
    if type(declared) is not int:
        raise PluginAPIError(f"{DECLARATION} must be a whole number such as {PLUGIN_API_VERSION}, got {declared!r}")
    if declared > PLUGIN_API_VERSION:
        raise PluginAPIError(f"the plugin targets plugin API {declared}, but {core}: upgrade fastgen-core to a release "
                             f"with plugin API {declared} or later (pip install -U fastgen-core), or install a "
                             f"release of the plugin written for plugin API {PLUGIN_API_VERSION}")
    if declared < OLDEST_PLUGIN_API:
        raise PluginAPIError(f"the plugin targets plugin API {declared}, older than the oldest this core loads "
                             f"({OLDEST_PLUGIN_API}); {core}. Changed since {declared}: {changes_since(declared)}. "
                             "Install a release of the plugin written for a newer plugin API")
    # older than the core's, and still loaded (the current version returned first)
    return declared, (f"{plugin} targets plugin API {declared}; {core}. Changed since {declared}: "
                      f"{changes_since(declared)}. It still loads; a newer release of the plugin may target "
                      f"plugin API {PLUGIN_API_VERSION} (its author: check it against these changes, then {declare})")


def _release() -> str:
    """The installed fastgen-core's release as " (0.1.0)", for messages; "" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f" ({version('fastgen-core')})"
    except PackageNotFoundError:
        return ""


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
    from .config import plugin_filters_from_env
    filters = plugin_filters_from_env()
    allow, deny, strict = filters.allow, filters.deny, filters.strict
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
            _, warning = check_plugin_api(module, f"fastgen plugin {ep.name!r} from {dist} {version}")
            ps.register(module, name=ep.name, dist=dist, version=version, value=ep.value, entry_point=True)
        except Exception as exc:  # a broken plugin must not take the others down
            if strict:
                raise
            failure = PluginLoadFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}")
            ps.failed.append(failure)
            warnings.warn(f"fastgen plugin {ep.name!r} from {dist} {version} failed to load: {failure.error}",
                          RuntimeWarning, stacklevel=2)
            continue
        if warning:
            ps.notes.append(warning)
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
