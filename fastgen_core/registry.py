"""Architecture / model_type -> family, with every claim attributed to the distribution that made it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DuplicateFamilyError, UnsupportedModelError
from .family import ModelFamily
from .plugins import PluginSet, get_plugin_set


@dataclass(frozen=True)
class RegisteredFamily:
    family: ModelFamily
    dist: str
    version: str
    plugin: str


class FamilyRegistry:
    """All families the plugins registered. Clashes are kept and raised when the clashing key is used."""

    def __init__(self, plugins: PluginSet | None = None):
        self.plugins = plugins if plugins is not None else get_plugin_set()
        self.families: list[RegisteredFamily] = []
        self.by_arch: dict[str, RegisteredFamily] = {}
        self.by_type: dict[str, RegisteredFamily] = {}
        self.clashes: dict[str, list[RegisteredFamily]] = {}
        self.errors: list[str] = []
        for name, impl in self._impls():
            info = self.plugins.loaded.get(name)
            dist, version = (info.dist, info.version) if info else (name, "")
            try:
                impl.function(register=self._registrar(name, dist, version))
            except Exception as exc:  # a plugin whose hook raises is reported, the others keep working
                self.errors.append(f"plugin {name!r} ({dist}) failed in register_model_families: "
                                   f"{type(exc).__name__}: {exc}")

    def _impls(self):
        for impl in self.plugins.pm.hook.register_model_families.get_hookimpls():
            yield impl.plugin_name, impl

    def _registrar(self, plugin: str, dist: str, version: str):
        def register(family: ModelFamily) -> None:
            if not isinstance(family, ModelFamily):
                raise TypeError(f"register() takes a fastgen_core.ModelFamily, got {type(family).__name__}")
            rf = RegisteredFamily(family, dist, version, plugin)
            self.families.append(rf)
            for key, table in [(a, self.by_arch) for a in family.architectures] + \
                              [("model_type:" + t, self.by_type) for t in family.model_types]:
                k = key.removeprefix("model_type:")
                if k in table and table[k].dist != dist:
                    self.clashes.setdefault(key, [table[k]]).append(rf)
                else:
                    table[k] = rf
        return register

    def _check_clash(self, key: str) -> None:
        if key in self.clashes:
            claimants = self.clashes[key]
            who = ", ".join(f"{rf.dist} (family {rf.family.name!r}, entry point {rf.plugin!r})" for rf in claimants)
            disable = self._disable_hint(claimants)
            names = [rf.family.name for rf in claimants if self._unambiguous(rf.family.name)]
            choose = ""
            if names:
                choose = (f", or choose the family for this model: fastgen_core.pipeline(model, family={names[0]!r}) "
                          f"or fastgen serve --engine-options '{{\"family\": \"{names[0]}\"}}' (families: "
                          f"{', '.join(map(repr, names))})")
            raise DuplicateFamilyError(
                f"{key.removeprefix('model_type:')!r} is claimed by more than one installed plugin: {who}. "
                f"Uninstall one, disable one with {disable}{choose}.")

    def _disable_hint(self, claimants: list[RegisteredFamily]) -> str:
        """How to drop each claimant: its entry-point name for FASTGEN_DISABLE_PLUGINS, or (registered in
        this process, not through an entry point) not registering it."""
        hints = []
        for rf in claimants:
            info = self.plugins.loaded.get(rf.plugin)
            if info is not None and info.entry_point:
                hints.append(f"FASTGEN_DISABLE_PLUGINS={rf.plugin} (drops {rf.dist})")
            else:
                hints.append(f"not registering plugin {rf.plugin!r} ({rf.dist}, registered in this process)")
        return " or ".join(hints)

    def _unambiguous(self, name: str) -> bool:
        return len({rf.dist for rf in self.families if rf.family.name == name}) == 1

    def get(self, name: str) -> RegisteredFamily:
        found = [rf for rf in self.families if rf.family.name == name]
        if len({rf.dist for rf in found}) > 1:
            disable = self._disable_hint(found)
            raise DuplicateFamilyError(f"family {name!r} is registered by more than one installed plugin: "
                                       f"{', '.join(rf.dist for rf in found)}; uninstall one or disable one with "
                                       f"{disable}")
        if found:
            return found[0]
        raise UnsupportedModelError(f"no installed plugin provides a family named {name!r}; "
                                    f"installed families: {sorted({rf.family.name for rf in self.families})}")

    def resolve(self, hf_config: dict, model_path: Path | None = None, family: str | None = None) -> RegisteredFamily:
        """Resolution order: explicit family name, each of ``architectures``, ``model_type``, the
        ``resolve_model_family`` hook, then an error listing what is supported."""
        if family:
            return self.get(family)
        for arch in hf_config.get("architectures") or []:
            self._check_clash(arch)
            if arch in self.by_arch:
                return self.by_arch[arch]
        mtype = hf_config.get("model_type")
        if mtype:
            self._check_clash("model_type:" + mtype)
            if mtype in self.by_type:
                return self.by_type[mtype]
        found = self.plugins.pm.hook.resolve_model_family(hf_config=hf_config, model_path=model_path)
        if found is not None:
            for rf in self.families:
                if rf.family == found:
                    return rf
            return RegisteredFamily(found, "<resolve_model_family hook>", "", "")
        failed = "".join(f"\n  plugin {f.name!r} ({f.dist}) failed to load: {f.error}" for f in self.plugins.failed)
        raise UnsupportedModelError(
            f"no installed fastgen plugin supports architectures={hf_config.get('architectures')} "
            f"model_type={mtype!r}. Supported architectures: {sorted(self.by_arch) or 'none (install a plugin, e.g. fastgen-llama)'}"
            + failed)
