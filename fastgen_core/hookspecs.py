"""Hook specifications of the ``fastgen`` plugin system (pluggy project name "fastgen")."""
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
