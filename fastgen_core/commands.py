"""``fastgen`` subcommands as plugins register them (the ``register_commands`` hook). The core registers its own
(generate, plugins, snapshot, serve, bench) through the same hook, first; cli.py builds the parser from them."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from .hookspecs import hookimpl
from .plugins import PluginSet, get_plugin_set

CORE = "fastgen-core"       # the plugin name the core's own hook implementations are registered under


@dataclass(frozen=True)
class Command:
    """A subcommand as a plugin registers it.

    name: ``fastgen NAME``. help: one line for ``fastgen --help``.
    arguments: "module:attr" of ``arguments(parser)``, which adds the command's options to its argparse parser.
    run: "module:attr" of ``run(args) -> int``, which runs it and returns the exit code.
    """

    name: str
    help: str
    arguments: str
    run: str

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str) or self.name.startswith("-"):
            raise ValueError(f"Command.name must be a word like 'serve', got {self.name!r}")
        for what in ("arguments", "run"):
            value = getattr(self, what)
            if not isinstance(value, str) or ":" not in value:
                raise ValueError(f"Command {self.name!r}: {what} must be a 'module:attr' string, got {value!r}")


@dataclass(frozen=True)
class RegisteredCommand:
    command: Command
    dist: str


def collect_commands(plugins: PluginSet | None = None) -> tuple[dict[str, RegisteredCommand], list[str]]:
    """Every registered command by name, the core's first, and notes: hooks that raised, names registered twice
    (the first registration keeps the name)."""
    ps = plugins if plugins is not None else get_plugin_set()
    if CORE not in ps.loaded:
        ps.register(sys.modules[__name__], CORE, dist=CORE, value=__name__)
    found, notes = ps.collect("register_commands", Command)
    found.sort(key=lambda pair: pair[1].name != CORE)                 # the core's commands first (stable)
    commands: dict[str, RegisteredCommand] = {}
    for command, info in found:
        taken = commands.get(command.name)
        if taken is not None:
            notes.append(f"command {command.name!r} of {info.dist} is not available: {taken.dist} registered it "
                         f"first (FASTGEN_DISABLE_PLUGINS={info.name} drops {info.dist})")
            continue
        commands[command.name] = RegisteredCommand(command, info.dist)
    return commands, notes


@hookimpl
def register_commands(register):
    """The core's own subcommands."""
    register(Command("generate", "generate a continuation of a prompt", "fastgen_core.cli:generate_arguments",
                     "fastgen_core.cli:generate"))
    register(Command("plugins", "list installed family plugins (and failed ones)",
                     "fastgen_core.cli:plugins_arguments", "fastgen_core.cli:list_plugins"))
    register(Command("snapshot", "save a model in the engine's layout for fast reloads",
                     "fastgen_core.cli:snapshot_arguments", "fastgen_core.cli:snapshot"))
    register(Command("serve", "start a persistent deployment (REST: OpenAI- and MII-compatible)",
                     "fastgen_core.server.cli:add_arguments", "fastgen_core.server.cli:run"))
    register(Command("bench", "measure throughput/latency against the roofline and transformers",
                     "fastgen_core.bench.cli:add_arguments", "fastgen_core.bench.cli:run"))
    register(Command("plan", "show the kernel each operation runs for a model, without running it",
                     "fastgen_core.ops.command:arguments", "fastgen_core.ops.command:run"))
