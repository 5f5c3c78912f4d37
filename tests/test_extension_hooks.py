"""What the core names no family for comes from the plugins through hooks: bench presets
(register_bench_presets, each from its family's plugin, configs as before), the parameters a token uses
(DecoderConfig.active_params, which Mixtral overrides), and the subcommands (register_commands, through which
the core registers its own)."""
import ast
import json
from pathlib import Path

import pytest

import fastgen_core as fg
from fastgen_core.cli import build_parser, main
from fastgen_core.commands import collect_commands
from fastgen_core.presets import collect_presets, preset_config

CORE = Path(fg.__file__).parent

# preset -> (plugin distribution, architecture, hidden, layers, heads, KV heads, vocabulary): as the core had them
PRESETS = {
    "phi-2": ("fastgen-phi", "PhiForCausalLM", 2560, 32, 32, 32, 51200),
    "falcon-7b": ("fastgen-falcon", "FalconForCausalLM", 4544, 32, 71, None, 65024),
    "falcon-40b": ("fastgen-falcon", "FalconForCausalLM", 8192, 60, 128, None, 65024),
    "llama-2-7b": ("fastgen-llama", "LlamaForCausalLM", 4096, 32, 32, 32, 32000),
    "mixtral-small": ("fastgen-mixtral", "MixtralForCausalLM", 4096, 8, 32, 8, 32000),
    "mixtral-8x7b": ("fastgen-mixtral", "MixtralForCausalLM", 4096, 32, 32, 8, 32000),
    "pythia-1b": ("fastgen-gptneox", "GPTNeoXForCausalLM", 2048, 16, 8, None, 50304),
    "tiny-llama": ("fastgen-llama", "LlamaForCausalLM", 64, 2, 4, 2, 512),
}


def test_every_preset_comes_from_its_familys_plugin_with_its_config():
    presets, errors = collect_presets()
    assert not errors and sorted(presets) == sorted(PRESETS)
    for name, (dist, arch, hidden, layers, heads, kv, vocab) in PRESETS.items():
        [registered] = presets[name]
        hf = preset_config(name)
        assert registered.dist == dist
        assert (hf["architectures"], hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]) == \
            ([arch], hidden, layers, vocab), name
        assert hf["num_attention_heads"] == heads and (kv is None or hf["num_key_value_heads"] == kv), name
    assert preset_config("falcon-7b")["multi_query"] and preset_config("pythia-1b")["use_parallel_residual"]
    assert preset_config("mixtral-small", num_layers=1)["num_hidden_layers"] == 1


def test_a_preset_registered_by_two_plugins_is_refused_naming_both():
    class Mine:
        @fg.hookimpl
        def register_bench_presets(self, register):
            register(fg.BenchPreset("tiny-llama", "fastgen_llama.presets:tiny_llama"))
    import fastgen_llama.plugin
    ps = fg.get_plugin_set(autoload=False)
    ps.register(fastgen_llama.plugin, "llama", dist="fastgen-llama")
    ps.register(Mine(), "mine", dist="my-presets")
    with pytest.raises(fg.ConfigError, match="'tiny-llama' is registered by more than one installed plugin: "
                                             "fastgen-llama, my-presets"):
        preset_config("tiny-llama", plugins=ps)
    with pytest.raises(ValueError, match=r"unknown preset 'gpt-5'; known: \['llama-2-7b', 'tiny-llama'\]"):
        preset_config("gpt-5", plugins=ps)
    with pytest.raises(ValueError, match="config must be a 'module:attr' string"):
        fg.BenchPreset("x", "no-colon")


def test_the_core_names_no_family_and_no_moe_key():
    """Neither the bench nor the roofline names a family, a preset's config class or a MoE config key in its code
    (docstrings may give examples)."""
    words = ("phi", "falcon", "llama", "mixtral", "pythia", "gptneox", "num_local_experts", "num_experts",
             "moe_intermediate_size", "Config(")
    for path in [*(CORE / "bench").glob("*.py"), CORE / "presets.py"]:
        tree = ast.parse(path.read_text())
        docs = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        code = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and id(n) not in docs] + [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
        named = {w for w in words for c in code if w in c.lower()}
        assert not named, f"{path.name} names {named}"


def test_a_family_says_how_many_parameters_a_token_uses():
    from fastgen_llama.model import LlamaConfig
    from fastgen_mixtral.model import MixtralConfig
    hf = preset_config("mixtral-small", num_layers=1)
    assert LlamaConfig.from_hf(preset_config("tiny-llama")).active_params(1000) == 1000       # dense: all
    assert MixtralConfig.from_hf(hf).active_params(10 ** 10) == 10 ** 10 - 1 * 8 * 3 * 4096 * 14336 * (1 - 2 / 8)


def test_the_core_registers_its_commands_through_the_hook_and_a_plugins_command_runs(tmp_path, capsys):
    class Hello:
        @fg.hookimpl
        def register_commands(self, register):
            register(fg.Command("hello", "say hello", f"{__name__}:hello_arguments", f"{__name__}:hello"))
            register(fg.Command("serve", "a second serve", f"{__name__}:hello_arguments", f"{__name__}:hello"))
    ps = fg.get_plugin_set(autoload=False)
    ps.register(Hello(), "hello", dist="fastgen-hello")
    commands, notes = collect_commands(ps)
    assert list(commands) == ["generate", "plugins", "snapshot", "serve", "bench", "plan", "hello"]
    assert {c.dist for n, c in commands.items() if n != "hello"} == {"fastgen-core"}
    assert commands["serve"].command.run == "fastgen_core.server.cli:run"          # the core's, registered first
    assert notes == ["command 'serve' of fastgen-hello is not available: fastgen-core registered it first "
                     "(FASTGEN_DISABLE_PLUGINS=hello drops fastgen-hello)"]
    with pytest.warns(RuntimeWarning, match="command 'serve' of fastgen-hello"):
        args = build_parser(ps).parse_args(["hello", "--name", "fastgen"])
    assert fg.family.load_object(args._run)(args) == 7 and capsys.readouterr().out == "hello, fastgen\n"


def test_the_installed_commands_are_the_cores_six():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert list(sub.choices) == ["generate", "plugins", "snapshot", "serve", "bench", "plan"]
    assert main(["plugins", "--json"]) == 0


def hello_arguments(p):
    p.add_argument("--name", default="world")


def hello(args) -> int:
    print(f"hello, {args.name}")
    return 7
