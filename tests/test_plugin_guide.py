"""docs/writing-a-plugin.md says what the code does: its `fastgen plugins` output, its clash error, the code
it quotes from fastgen-gptneox, the signatures in its reference tables and the aliases it lists are checked
against the real thing, and its reference names every public layer and test helper."""
import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastgen_core
import fastgen_core.layers
import fastgen_core.testing

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "writing-a-plugin.md").read_text()


def blocks(lang: str) -> list[str]:
    """The fenced blocks of the guide in language ``lang`` ("" for plain ones)."""
    return [body for tag, body in re.findall(r"^```(\w*)\n(.*?)^```$", GUIDE, re.M | re.S) if tag == lang]


def test_fastgen_plugins_output_is_what_the_guide_shows():
    [console] = [b for b in blocks("console") if "fastgen plugins\n" in b]
    lines = console.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$ ") and line.endswith("fastgen plugins"))
    shown = [line for line in lines[start + 1:] if not line.startswith("$ ")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGEN_")}
    env.update(dict(re.findall(r"(FASTGEN_\w+)=(\S+)", lines[start])))
    out = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plugins"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.splitlines() == shown


@pytest.mark.parametrize("block", [b for b in blocks("python") if b.startswith("# from ")],
                         ids=lambda b: b.splitlines()[0].split("/")[-1])
def test_quoted_code_is_the_plugins_code(block):
    first, _, body = block.partition("\n")
    source = (ROOT / first.removeprefix("# from ")).read_text()
    assert body in source, f"the guide's excerpt of {first.removeprefix('# from ')} is not in the file any more"


def test_reference_names_every_public_layer_and_test_helper():
    missing = [n for n in fastgen_core.layers.__all__ + fastgen_core.testing.__all__
               if not re.search(rf"`{n}[`(]", GUIDE)]
    assert not missing, f"docs/writing-a-plugin.md does not mention {missing}"


def _table_signatures() -> list[tuple[str, str]]:
    """(name, "(params)") from reference table rows that start `| `name` | `(...)` |` or `| `name(...)` |`."""
    rows = re.findall(r"^\| `(\w+)` \| `(\([^`]*\))` \|", GUIDE, re.M)
    rows += [(n, f"({p})") for n, p in re.findall(r"^\| `(\w+)\(([^`]*)\)` \|", GUIDE, re.M)]
    return rows


@pytest.mark.parametrize("name, documented", _table_signatures(), ids=lambda x: x if "(" not in x else "")
def test_reference_signatures_are_the_real_ones(name, documented):
    obj = getattr(fastgen_core.layers, name, None) or getattr(fastgen_core.testing, name)
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    real = [(p.name, p.default) for p in sig.parameters.values() if p.name != "self"]
    args = ast.parse(f"def f{documented}: pass").body[0].args
    defaults = [inspect.Parameter.empty] * (len(args.args) - len(args.defaults)) + \
        [ast.literal_eval(d) for d in args.defaults]
    assert [(a.arg, d) for a, d in zip(args.args, defaults)] == real


def test_common_from_hf_aliases_are_the_real_ones():
    rows = re.findall(r"^\| `(\w+)` \| ((?:`\w+`(?:, )?)+)", GUIDE, re.M)
    aliases = {field: re.findall(r"`(\w+)`", names) for field, names in rows
               if field in fastgen_core.DecoderConfig.__dataclass_fields__}
    assert {"hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings"} <= set(aliases)
    base = {"vocab_size": 10, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}
    for field, names in aliases.items():
        if field in ("tie_word_embeddings", "sliding_window", "eos_token_id"):
            continue            # not aliases; their rows say how they are read
        for name in names:
            hf = {k: v for k, v in base.items() if k not in names}
            hf[name] = 32 if field != "dtype" else "bfloat16"
            got = fastgen_core.DecoderConfig.common_from_hf(hf)[field]
            assert got == hf[name], f"{field} is not read from {name!r}"


def test_clash_error_is_the_one_the_guide_shows():
    import fastgen_qwen2.plugin

    class Acme:
        @fastgen_core.hookimpl
        def register_model_families(self, register):
            register(fastgen_core.ModelFamily(name="qwen2-fork", architectures=("Qwen2ForCausalLM",),
                                              config="acme_qwen2.model:C", model="acme_qwen2.model:M",
                                              weights="acme_qwen2.model:W"))

    ps = fastgen_core.get_plugin_set(autoload=False)
    ps.register(Acme(), "acme", dist="acme-qwen2", entry_point=True)        # entry points load in name order
    ps.register(fastgen_qwen2.plugin, "qwen2", dist="fastgen-qwen2", entry_point=True)
    with pytest.raises(fastgen_core.DuplicateFamilyError) as e:
        fastgen_core.FamilyRegistry(ps).resolve({"architectures": ["Qwen2ForCausalLM"]})
    [shown] = [b for b in blocks("") if b.startswith("DuplicateFamilyError")]
    assert " ".join(shown.split()) == f"DuplicateFamilyError: {e.value}"
