"""Benchmark presets: full-size architectures for ``fastgen bench --preset`` (dummy weights), supplied by the
family plugins through the ``register_bench_presets`` hook, so the core names no family."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .family import load_object
from .plugins import PluginSet, get_plugin_set


@dataclass(frozen=True)
class BenchPreset:
    """A preset as a plugin registers it.

    name: what ``--preset`` takes ("llama-2-7b").
    config: "module:attr" of a callable returning the preset's config: a transformers ``PretrainedConfig``
    (written with ``to_dict()``, ``architectures`` from its class name) or a config.json dict.
    description: one line for ``fastgen bench --help``.
    """

    name: str
    config: str
    description: str = ""

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError("BenchPreset.name must be a non-empty string")
        if not isinstance(self.config, str) or ":" not in self.config:
            raise ValueError(f"BenchPreset {self.name!r}: config must be a 'module:attr' string, got {self.config!r}")


@dataclass(frozen=True)
class RegisteredPreset:
    preset: BenchPreset
    dist: str


def collect_presets(plugins: PluginSet | None = None) -> tuple[dict[str, list[RegisteredPreset]], list[str]]:
    """Every registered preset by name (more than one entry: a clash) and the plugins' hook errors."""
    found, errors = (plugins or get_plugin_set()).collect("register_bench_presets", BenchPreset)
    presets: dict[str, list[RegisteredPreset]] = {}
    for preset, info in found:
        presets.setdefault(preset.name, []).append(RegisteredPreset(preset, info.dist))
    return presets, errors


def preset_names(plugins: PluginSet | None = None) -> list[str]:
    return sorted(collect_presets(plugins)[0])


def preset_config(name: str, num_layers: int | None = None, plugins: PluginSet | None = None) -> dict:
    """The config.json dict of preset ``name`` (``num_layers`` overrides its layer count)."""
    presets, errors = collect_presets(plugins)
    found = presets.get(name)
    if not found:
        failed = "".join(f"; {e}" for e in errors)
        raise ValueError(f"unknown preset {name!r}; known: {sorted(presets)} (registered by the installed family "
                         f"plugins){failed}")
    if len({rp.dist for rp in found}) > 1:
        raise ConfigError(f"preset {name!r} is registered by more than one installed plugin: "
                          f"{', '.join(rp.dist for rp in found)}; uninstall or disable one (FASTGEN_DISABLE_PLUGINS)")
    cfg = load_object(found[0].preset.config)()
    if isinstance(cfg, dict):
        data = dict(cfg)
        if num_layers is not None:
            data["num_hidden_layers"] = num_layers
        return data
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
    data = cfg.to_dict()
    data["architectures"] = [type(cfg).__name__.replace("Config", "ForCausalLM")]
    return data
