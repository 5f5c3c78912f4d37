"""Hook specifications of the ``fastgen`` plugin system (pluggy project name "fastgen").

Besides its hook implementations, a plugin module declares the plugin API version it is written for,
``FASTGEN_PLUGIN_API = 3`` (the core's is ``fastgen_core.PLUGIN_API_VERSION``); plugins.py checks it on loading.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("fastgen")
hookimpl = pluggy.HookimplMarker("fastgen")


@hookspec
def register_model_families(register):
    """Register the model families this plugin provides.

    Called once per plugin when a FamilyRegistry is built. Call ``register(ModelFamily(...))`` for each
    family. The core records which distribution made each claim; two distributions claiming the same
    architecture or model_type is reported as a DuplicateFamilyError naming both. Not firstresult.
    Must be cheap: import neither torch nor CuPy here (name heavy objects as "module:attr" strings).
    """


@hookspec(firstresult=True)
def resolve_model_family(hf_config: dict, model_path):
    """Pick a family for a model that no registered architecture or model_type matched.

    ``hf_config`` is the parsed config.json; ``model_path`` the model directory (a pathlib.Path) or None.
    Return a ModelFamily or None. Stops at the first non-None result.
    """


@hookspec
def register_bench_presets(register):
    """Register benchmark presets: full-size architectures ``fastgen bench --preset NAME`` runs with dummy weights.

    Called once per plugin when the bench lists or writes its presets (``fastgen bench`` builds its parser).
    Call ``register(BenchPreset(name=..., config="module:attr"))`` for each; ``config`` names a callable that
    returns the preset's config (a transformers ``PretrainedConfig`` or a config.json dict). Two
    distributions registering one name is an error naming both when that preset is used. Must be cheap, as
    ``register_model_families``: the callable is imported only when its preset is written.
    """


@hookspec
def register_commands(register):
    """Register ``fastgen`` subcommands.

    Called once per plugin when the command line builds its parser (the core's own ``generate``, ``plugins``,
    ``snapshot``, ``serve`` and ``bench`` register through this hook too, first). Call
    ``register(Command(name=..., help=..., arguments="module:attr", run="module:attr"))``: ``arguments(parser)``
    adds the command's options to its argparse parser, ``run(args) -> int`` runs it (the exit code). A name
    already taken is refused with a note naming both distributions; the first registration keeps it. An
    ``arguments`` module that cannot be imported (a missing extra) leaves the command listed, saying why it
    is unavailable.
    """
