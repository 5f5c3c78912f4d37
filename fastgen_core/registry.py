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
            who = ", ".join(f"{rf.dist} (family {rf.family.name!r})" for rf in self.clashes[key])
            raise DuplicateFamilyError(
                f"{key.removeprefix('model_type:')!r} is claimed by more than one installed plugin: {who}. "
                "Uninstall one, disable it with FASTGEN_DISABLE_PLUGINS=<entry point name>, "
                "or choose explicitly with family=<name>.")

    def get(self, name: str) -> RegisteredFamily:
        for rf in self.families:
            if rf.family.name == name:
                return rf
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
