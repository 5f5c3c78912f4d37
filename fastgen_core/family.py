"""ModelFamily: what a plugin registers. Heavy parts are lazy "module:attr" strings."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field


def load_object(spec: str):
    """Import "package.module:attr" and return attr (the lazy strings plugins register)."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attr', got {spec!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelFamily:
    """A model family as a plugin registers it.

    name: short family name ("llama").
    architectures: HF ``architectures`` strings it runs ("LlamaForCausalLM", ...).
    model_types: HF ``model_type`` strings it runs ("llama", ...).
    config: "module:Class" whose ``from_hf(dict)`` builds the family config (a DecoderConfig).
    model: "module:Class" of the torch model, constructed as ``Class(config)``.
    weights: "module:attr" naming a WeightMap, or a callable ``f(config) -> WeightMap``.
    """

    name: str
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    config: str = ""
    model: str = ""
    weights: str = ""
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not self.name:
            raise ValueError("ModelFamily.name must be a non-empty string")
        if not (self.architectures or self.model_types):
            raise ValueError(f"ModelFamily {self.name!r} claims no architectures and no model_types")
        for what in ("config", "model", "weights"):
            value = getattr(self, what)
            if not isinstance(value, str) or ":" not in value:
                raise ValueError(f"ModelFamily {self.name!r}: {what} must be a 'module:attr' string, got {value!r}")
        object.__setattr__(self, "architectures", tuple(self.architectures))
        object.__setattr__(self, "model_types", tuple(self.model_types))

    def load_config_class(self):
        return load_object(self.config)

    def load_model_class(self):
        return load_object(self.model)

    def load_weight_map(self, config):
        """The family's WeightMap for ``config`` (``weights`` names a WeightMap or a callable returning one),
        marked with the family's name for the loader's error messages."""
        from .errors import WeightLoadError
        from .weights import Rule, WeightMap
        wm = load_object(self.weights)
        what = f"the {self.name!r} family's weights {self.weights!r}"
        if callable(wm) and not isinstance(wm, WeightMap):
            wm = wm(config)
            what += " returned"
        else:
            what += " is"
        if isinstance(wm, (list, tuple)):
            kinds = sorted({type(r).__name__ for r in wm})
            hint = ("wrap the rules: WeightMap(rules, ignore=[...])" if kinds == [Rule.__name__]
                    else "a WeightMap(rules, ignore) of fastgen_core.Rule objects")
            raise WeightLoadError(f"{what} a {type(wm).__name__} of {len(wm)} {'/'.join(kinds) or 'no'} objects; "
                                  f"a fastgen_core.WeightMap is needed: {hint}")
        if not isinstance(wm, WeightMap):
            raise WeightLoadError(f"{what} a {type(wm).__name__} ({wm!r:.80}); a fastgen_core.WeightMap, or a "
                                  "callable f(config) returning one, is needed")
        return dataclasses.replace(wm, family=self.name)
