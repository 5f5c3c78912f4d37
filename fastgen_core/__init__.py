"""fastgen: a Dynamic SplitFuse inference engine whose model families are plugins.

Importing ``fastgen_core`` is cheap: what a plugin's ``plugin.py`` needs (``hookimpl``, ``ModelFamily``,
``DecoderConfig``, the errors) is imported eagerly and needs no torch; everything that does (the engine,
the pipeline, weight maps) is imported on first attribute access (PEP 562). That is what lets every
installed plugin be discovered without importing torch once per plugin.
"""
import sys
import types
from importlib import import_module

from .errors import (ConfigError, DuplicateFamilyError, FastgenError, InvalidRequestError, UnsupportedModelError,
                     WeightLoadError)
from .family import ModelFamily
from .commands import Command
from .hookspecs import hookimpl
from .model_config import DecoderConfig
from .plugins import PLUGIN_API_VERSION, PluginSet, get_plugin_set
from .presets import BenchPreset
from .registry import FamilyRegistry

__version__ = "0.1.0"

# public name -> submodule that defines it (imported when the name is first used)
_LAZY = {
    "EngineConfig": ".config",
    "LLMEngine": ".engine.engine", "RequestOutput": ".engine.outputs", "Response": ".engine.outputs",
    "Pipeline": ".pipeline", "pipeline": ".pipeline",
    "SamplingParams": ".sampling",
    "Rule": ".weights", "WeightMap": ".weights", "fused": ".weights",
    "Kernel": ".ops", "KernelPlan": ".ops",
}

# public submodules a plugin may use besides ``layers``: CuPy kernel loading, tensor-parallel building blocks
_SUBMODULES = ("kernels", "parallel")

__all__ = ["pipeline", "serve", "client", "Pipeline", "LLMEngine", "EngineConfig", "SamplingParams", "Response", "RequestOutput",
           "ModelFamily", "DecoderConfig", "BenchPreset", "Command", "FamilyRegistry", "PluginSet", "get_plugin_set", "PLUGIN_API_VERSION", "hookimpl", "Rule", "WeightMap", "fused", "Kernel", "KernelPlan",
           "FastgenError", "InvalidRequestError", "ConfigError", "UnsupportedModelError", "DuplicateFamilyError",
           "WeightLoadError", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastgen_core' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value          # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _LazyPackage(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule fastgen_core.pipeline binds it as the package attribute "pipeline",
        # which would shadow the public function of that name; keep the name resolving to the function.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _LazyPackage


def serve(*args, **kwargs):
    """Start a persistent deployment and return a client (see fastgen_core.server.frontdoor.deployment.serve)."""
    from .server import require_extras
    require_extras()
    from .server.frontdoor.deployment import serve as _serve
    return _serve(*args, **kwargs)


def client(*args, **kwargs):
    """Connect to a running deployment by name or URL (see fastgen_core.server.frontdoor.deployment.client)."""
    from .server.frontdoor.deployment import client as _client
    return _client(*args, **kwargs)
