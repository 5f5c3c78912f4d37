"""``fastgen COMMAND``: the parser is built from the commands registered through the ``register_commands``
hook (commands.py: the core's generate, plugins, snapshot, serve and bench, then any plugin's). The core's
generate, plugins and snapshot are here."""
from __future__ import annotations

import argparse
import sys
import warnings


MODEL_HELP = ("HF model directory or Hugging Face Hub id (org/name: the cached snapshot, else downloaded) "
              "(default: the embedded SmolLM2-135M-Instruct)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default once; options whose help already says it, flags off by default, and
    options without a default are shown as written. A flag's default is said as on or off, never "True": a
    ``--no-x`` flag (store_false) defaults to True, which is x on, not the flag given."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.nargs == 0 and isinstance(action.default, bool):
            # BooleanOptionalAction adds "(default: %(default)s)" itself (Python 3.11, 3.12): "True" again
            help = help.replace(" (default: %(default)s)", "")
            both = isinstance(action, argparse.BooleanOptionalAction)        # --x / --no-x
            if "default" in help or (action.default is False and not both):
                return help
            if both:
                return f"{help} (default: {'on' if action.default else 'off'})"
            return f"{help} (default: not given)"
        if action.default is None or action.default is False or "default" in help:
            return action.help
        return super()._get_help_string(action)


def generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="+", help="prompt text (several words are joined with spaces)")
    from .config import KERNELS_HELP, EngineConfig
    from .sampling import add_cli_flags
    p.add_argument("--model", default=None, help=MODEL_HELP)
    add_cli_flags(p)                 # --max-new-tokens ... --ignore-eos, from SamplingParams' declaration
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to the prompt")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's on GPU, "
                                                 "float32 on CPU)")
    p.add_argument("--load-format", default=EngineConfig.load_format, help="auto, safetensors, pt, dummy or snapshot")
    p.add_argument("--tensor-parallel-size", type=int, default=EngineConfig.tensor_parallel_size,
                   help="shard the model over this many GPUs from --device on (on CPU: processes)")
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)


def generate(args) -> int:
    import fastgen_core as fg
    from .sampling import from_cli_flags
    # validate the options before paying for loading the model
    options = from_cli_flags(args)
    fg.SamplingParams(**options)
    pipe = fg.pipeline(args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
                       tensor_parallel_size=args.tensor_parallel_size,
                       **({"kernels": args.kernels} if args.kernels else {}))
    try:
        prompt = " ".join(args.prompt)
        if args.chat:
            tok = pipe.tokenizer
            if tok is None or not getattr(tok, "chat_template", None):
                raise fg.InvalidRequestError("--chat needs a tokenizer with a chat template; this model has none")
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            prompt = tok(text, add_special_tokens=False).input_ids
        print(pipe(prompt, **options)[0].generated_text)
    finally:
        pipe.destroy()          # stops tensor-parallel workers, if any
    return 0


def plugins_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def list_plugins(args) -> int:
    import json

    from .plugins import PLUGIN_API_VERSION
    from .registry import FamilyRegistry
    reg = FamilyRegistry()
    ps = reg.plugins
    api = {name: info.api for name, info in ps.loaded.items()}      # the plugin API version each declares
    data = {
        "core_plugin_api": PLUGIN_API_VERSION,
        "families": [{"family": rf.family.name, "distribution": rf.dist, "version": rf.version,
                      "plugin_api": api.get(rf.plugin),
                      "architectures": list(rf.family.architectures), "model_types": list(rf.family.model_types)}
                     for rf in reg.families],
        "failed": [{"plugin": f.name, "distribution": f.dist, "version": f.version, "error": f.error} for f in ps.failed],
        "clashes": {k.removeprefix("model_type:"): [f"{rf.dist} ({rf.family.name})" for rf in v]
                    for k, v in reg.clashes.items()},
        "notes": ps.notes + reg.errors,
    }
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    if not data["families"]:
        print("no model families installed (from the repository: pip install -e plugins/fastgen-llama, for example)")
    for f in data["families"]:
        declared = "not declared" if f["plugin_api"] is None else f["plugin_api"]
        print(f"{f['family']:<10} {f['distribution']} {f['version']}  plugin API {declared}  "
              f"architectures: {', '.join(f['architectures'])}")
    for f in data["failed"]:
        print(f"FAILED     {f['distribution']} {f['version']} (entry point {f['plugin']!r}): {f['error']}")
    for key, who in data["clashes"].items():
        print(f"CLASH      {key!r} is claimed by: {', '.join(who)}")
    for n in data["notes"]:
        print(f"NOTE       {n}")
    return 0


def snapshot_arguments(p: argparse.ArgumentParser) -> None:
    from .config import EngineConfig
    p.add_argument("output", help="directory to write the snapshot to")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--dtype", default=None, help="dtype to store (default: the engine's: checkpoint's on GPU, "
                                                   "float32 on CPU)")
    p.add_argument("--load-format", default=EngineConfig.load_format, help="auto, safetensors, pt or dummy")


def snapshot(args) -> int:
    import fastgen_core as fg
    pipe = fg.pipeline(args.model, device="cpu", dtype=args.dtype, load_format=args.load_format, num_kv_blocks=1,
                       max_context=1)
    out = pipe.engine.save_snapshot(args.output)
    print(f"snapshot of {pipe.engine.family.family.name!r} ({pipe.engine.dtype}) written to {out}; load it with "
          f"fastgen_core.pipeline({str(out)!r})")
    return 0


def build_parser(plugins=None) -> argparse.ArgumentParser:
    """The parser of every registered command (``plugins``: a PluginSet; default: the installed plugins)."""
    from . import __version__
    from .commands import collect_commands
    from .family import load_object
    parser = argparse.ArgumentParser(prog="fastgen", description="fastgen: Dynamic SplitFuse LLM inference",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastgen {__version__} (fastgen-core)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands, notes = collect_commands(plugins)
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    for name, rc in commands.items():
        p = sub.add_parser(name, help=rc.command.help, formatter_class=HelpFormatter)
        p.set_defaults(_run=rc.command.run)
        try:
            load_object(rc.command.arguments)(p)
        except ImportError as e:
            p.set_defaults(_unavailable=f"'fastgen {name}' is unavailable: {e}")
    return parser


def main(argv=None) -> int:
    from .errors import FastgenError
    from .family import load_object
    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    try:
        return load_object(args._run)(args)
    except FastgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:       # Ctrl-C (what was in flight has been aborted, a deployment drained): no traceback
        print(f"fastgen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
