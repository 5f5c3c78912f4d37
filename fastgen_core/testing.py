"""Conformance tools any family plugin runs against transformers (our pytester).

    from fastgen_core.testing import check_family
    def test_conformance(tmp_path):
        check_family(MyHFConfig(...tiny...), tmp_path)

It saves a tiny random transformers model, loads it through the installed plugins, and asserts that
greedy tokens equal transformers' ``generate(do_sample=False)`` token for token, and that the logits of
the first generated token are within 1e-4, under several token budgets (prompts split across steps) and
under a KV cache small enough that preemption happens, and with prefix caching on (the prompts twice,
the second time from cached blocks, under the same small cache). Every other run serves its decode-only steps of up
to ``decode_graph_batch`` sequences through the CUDA-graph path's padded static buffers (without capture).
``check_family_tp`` does the same with the model sharded over CPU processes.

``check_plugin_isolation(package, tests)`` checks that a plugin imports only the core's public API and no
other plugin, and that its ``plugin.py`` imports without torch (see ``fastgen_core.isolation``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from .isolation import IsolationReport, check_plugin_import_is_cheap, check_plugin_isolation, check_public_api
from .pipeline import pipeline

__all__ = ["check_family", "check_family_tp", "check_registration", "ConformanceReport", "save_tiny_model",
           "random_prompts", "hf_greedy", "hf_last_logits", "make_tiny_tokenizer", "CHAT_TEMPLATE",
           "check_plugin_isolation", "check_public_api", "check_plugin_import_is_cheap", "IsolationReport"]


def save_tiny_model(hf_config, path: str | Path, seed: int = 0, shards: int = 1, safe: bool = True,
                    tokenizer=None, init_std: float | None = None):
    """Build a random transformers model from ``hf_config`` (float32), save it to ``path``, return it.

    ``shards > 1`` writes a sharded checkpoint with its index; ``safe=False`` writes pytorch_model*.bin
    (with pytorch_model.bin.index.json when sharded) instead of safetensors.
    ``init_std`` widens the random init so that logits are well separated (fewer argmax near-ties).
    Vectors (biases, norm weights) are always perturbed: transformers initialises them to 0 and 1, and a
    swapped or dropped bias or norm weight would otherwise load "correctly".
    """
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and init_std is not None:
                p.normal_(0.0, init_std)
            elif p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    path = Path(path)
    if shards > 1:
        nbytes = sum(p.numel() * 4 for p in model.state_dict().values())
        model.save_pretrained(path, max_shard_size=max(nbytes // shards + 1, 1024))
    else:
        model.save_pretrained(path)
    if not safe:
        _safetensors_to_bin(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def _safetensors_to_bin(path: Path) -> None:
    """Rewrite a saved checkpoint as pytorch_model*.bin (and its index when sharded): transformers 5's
    save_pretrained writes only safetensors, whatever ``safe_serialization`` says."""
    import json

    from safetensors.torch import load_file
    files = sorted(path.glob("*.safetensors"))
    names = {f.name: ("pytorch_model.bin" if len(files) == 1 else
                      f"pytorch_model-{k + 1:05d}-of-{len(files):05d}.bin") for k, f in enumerate(files)}
    for f in files:
        torch.save(load_file(str(f)), path / names[f.name])
        f.unlink()
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: names[v] for k, v in data["weight_map"].items()}
        (path / "pytorch_model.bin.index.json").write_text(json.dumps(data, indent=2))
        index.unlink()


def random_prompts(n: int, vocab_size: int, min_len: int = 1, max_len: int = 200, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    lens[0], lens[-1] = min_len, max_len            # always cover both ends
    return [torch.randint(0, vocab_size, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation with EOS disabled (what ``ignore_eos=True`` means for us)."""
    gc = copy.deepcopy(model.generation_config)
    gc.eos_token_id = -1          # None would fall back to the model's EOS; negative ids never match
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.max_new_tokens = max_new_tokens
    gc.min_new_tokens = None
    ids = torch.tensor([prompt])
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()   # silence the warning about the negative eos id
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def hf_last_logits(model, prompt: list[int]) -> torch.Tensor:
    return model(torch.tensor([prompt])).logits[0, -1].float()


def check_registration(plugin_module, name: str, architectures, model_types, dist: str = "<local>",
                       model_class=None, config_class=None):
    """Register ``plugin_module`` alone (no entry points) and assert that it declares a plugin API version this
    core loads (``FASTGEN_PLUGIN_API``; an older one than the core's is a warning) and that every architecture
    and model_type it should claim resolves to family ``name``, attributed to ``dist``, with the given classes.
    Returns the RegisteredFamily."""
    import warnings

    from .plugins import DECLARATION, PLUGIN_API_VERSION, PluginAPIError, check_plugin_api, get_plugin_set
    from .registry import FamilyRegistry
    assert getattr(plugin_module, DECLARATION, None) is not None, (
        f"{getattr(plugin_module, '__name__', plugin_module)} declares no plugin API version: add "
        f"{DECLARATION} = {PLUGIN_API_VERSION} to it (docs/writing-a-plugin.md, 'Plugin API version')")
    try:
        _, warning = check_plugin_api(plugin_module, f"plugin {name!r}")
    except PluginAPIError as e:
        raise AssertionError(f"plugin {name!r}: {e}") from None
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
    ps = get_plugin_set(autoload=False)
    ps.register(plugin_module, name=name, dist=dist)
    reg = FamilyRegistry(ps)
    assert reg.errors == [], reg.errors
    found = [reg.resolve({"architectures": [a]}) for a in architectures] + \
            [reg.resolve({"model_type": t}) for t in model_types]
    for rf in found:
        assert rf.family.name == name and rf.dist == dist, (rf.family.name, rf.dist)
    rf = found[0]
    if model_class is not None:
        assert rf.family.load_model_class() is model_class
    if config_class is not None:
        assert rf.family.load_config_class() is config_class
    return rf


@dataclass
class ConformanceReport:
    """What ``check_family`` / ``check_family_tp`` ran: one dict per engine setting, holding the setting
    (``max_ragged_batch_size``, ``num_kv_blocks``, ``enable_prefix_caching``, or ``tensor_parallel_size``)
    and what happened (``preemptions``, ``steps``, ``graph_steps``: decode steps on the CUDA-graph path's
    padded buffers)."""

    runs: list[dict]

    @property
    def preemptions(self) -> int:
        """The most preemptions any run saw (> 0: the tight-KV run really preempted)."""
        return max(r["preemptions"] for r in self.runs)


def check_family(hf_config, tmp_path: str | Path, num_prompts: int = 16, max_new_tokens: int = 8,
                 budgets=(7, 64, 768), min_len: int = 1, max_len: int = 200, kv_block_size: int = 4,
                 shards: int = 1, safe: bool = True, atol: float = 1e-4, seed: int = 0,
                 init_std: float | None = None, registry=None, decode_graph_batch: int = 6) -> ConformanceReport:
    """Assert equivalence with transformers for a tiny config of a family (see module docstring)."""
    tmp_path = Path(tmp_path) / f"model-{shards}-{int(safe)}"
    ref = save_tiny_model(hf_config, tmp_path, seed=seed, shards=shards, safe=safe, init_std=init_std)
    vocab = hf_config.vocab_size
    max_ctx = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", 4096)
    max_len = min(max_len, max_ctx - max_new_tokens - 1)
    prompts = random_prompts(num_prompts, vocab, min_len, max_len, seed)
    expected = [hf_greedy(ref, p, max_new_tokens) for p in prompts]
    first_logits = [hf_last_logits(ref, p) for p in prompts]
    longest = max(len(p) for p in prompts) + max_new_tokens
    tight_blocks = -(-longest // kv_block_size) + 2          # about one long sequence at a time: preemption
    settings = [dict(max_ragged_batch_size=b) for b in budgets]
    settings.append(dict(max_ragged_batch_size=budgets[min(1, len(budgets) - 1)], num_kv_blocks=tight_blocks))
    # prefix caching under preemption: the prompts go through twice, the second pass from cached blocks
    settings.append(dict(max_ragged_batch_size=budgets[0], num_kv_blocks=tight_blocks, enable_prefix_caching=True))
    # the step loop both ways: asynchronous scheduling (one step ahead of the forward) on runs 1, 3, 4
    for i_s, s in enumerate(settings):
        s["async_scheduling"] = i_s in (1, 3, 4)
    runs = []
    for i_s, s in enumerate(settings):
        pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=kv_block_size,
                        registry=registry, **s)
        graphs = None
        if i_s % 2:
            # the CUDA-graph decode path without capture (static buffers, padded buckets, scratch block);
            # a small largest bucket so that steps with more decodes still run eagerly
            graphs = pipe.engine.runner.enable_decode_graphs(decode_graph_batch, pipe.engine.max_context,
                                                              capture=False)
        outs = pipe(prompts, max_new_tokens=max_new_tokens, ignore_eos=True, return_logits=True)
        if s.get("enable_prefix_caching"):
            outs = pipe(prompts, max_new_tokens=max_new_tokens, ignore_eos=True, return_logits=True)
            assert pipe.engine.stats()["prefix_cache_hit_tokens"] > 0, f"{s}: the prefix cache was never hit"
        for i, (o, want) in enumerate(zip(outs, expected)):
            assert o.token_ids == want, (f"{s}: prompt {i} (len {len(prompts[i])}): fastgen {o.token_ids} != "
                                         f"transformers {want}")
            diff = (o.logits[0] - first_logits[i]).abs().max().item()
            assert diff <= atol, f"{s}: prompt {i}: first-token logits differ by {diff} > {atol}"
            assert o.finish_reason == "length" and o.generated_length == max_new_tokens
        stats = pipe.engine.stats()
        assert stats["kv_blocks_used"] == 0, f"{s}: KV blocks leaked: {stats}"
        if graphs is not None:
            assert graphs.replays > 0, f"{s}: no step took the decode-graph path"
        runs.append({**s, "preemptions": stats["preemptions"], "steps": stats["steps"],
                     "graph_steps": graphs.replays if graphs is not None else 0})
        pipe.destroy()
    report = ConformanceReport(runs)
    assert runs[-2]["preemptions"] > 0, f"the tight-KV run did not preempt ({runs[-2]}); the test would prove nothing"
    return report


def check_family_tp(hf_config, tmp_path: str | Path, tensor_parallel_size: int = 2, num_prompts: int = 16,
                    max_new_tokens: int = 8, budget: int = 64, max_len: int = 200, kv_block_size: int = 4,
                    atol: float = 1e-4, seed: int = 0, init_std: float | None = None,
                    decode_graph_batch: int = 6) -> ConformanceReport:
    """``check_family``'s oracle with the model sharded over ``tensor_parallel_size`` CPU processes (gloo):
    one engine with a small token budget (prompts split over steps, mixed with decodes), a KV cache for
    about one long sequence (preemption) and prefix caching on; the prompts run twice, the second time from
    cached blocks and with decode steps of up to ``decode_graph_batch`` sequences on the CUDA-graph path's
    padded buffers (without capture) on every rank. Greedy tokens must equal transformers' and first-token
    logits be within ``atol``."""
    tmp_path = Path(tmp_path) / f"model-tp{tensor_parallel_size}"
    ref = save_tiny_model(hf_config, tmp_path, seed=seed, init_std=init_std)
    max_ctx = getattr(hf_config, "max_position_embeddings", None) or 4096
    prompts = random_prompts(num_prompts, hf_config.vocab_size, 1, min(max_len, max_ctx - max_new_tokens - 1), seed)
    expected = [hf_greedy(ref, p, max_new_tokens) for p in prompts]
    first_logits = [hf_last_logits(ref, p) for p in prompts]
    longest = max(len(p) for p in prompts) + max_new_tokens
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=kv_block_size,
                    max_ragged_batch_size=budget, num_kv_blocks=-(-longest // kv_block_size) + 2,
                    enable_prefix_caching=True, tensor_parallel_size=tensor_parallel_size)
    try:
        for round_ in range(2):
            if round_ == 1:
                pipe.engine.runner.enable_decode_graphs(decode_graph_batch, pipe.engine.max_context, capture=False)
            outs = pipe(prompts, max_new_tokens=max_new_tokens, ignore_eos=True, return_logits=True)
            for i, (o, want) in enumerate(zip(outs, expected)):
                assert o.token_ids == want, (f"tp={tensor_parallel_size} round {round_}: prompt {i} (len "
                                             f"{len(prompts[i])}): fastgen {o.token_ids} != transformers {want}")
                diff = (o.logits[0] - first_logits[i]).abs().max().item()
                assert diff <= atol, f"tp={tensor_parallel_size}: prompt {i}: first-token logits differ by {diff}"
        stats = pipe.engine.stats()
    finally:
        pipe.destroy()
    assert stats["kv_blocks_used"] == 0, f"KV blocks leaked: {stats}"
    assert stats["preemptions"] > 0, f"the tight KV cache never preempted ({stats}); the test would prove less"
    assert stats["prefix_cache_hit_tokens"] > 0, f"the prefix cache was never hit ({stats})"
    assert stats["graph_steps"] > 0, f"no step took the decode-graph path ({stats})"
    return ConformanceReport([{"tensor_parallel_size": tensor_parallel_size, "preemptions": stats["preemptions"],
                               "steps": stats["steps"], "graph_steps": stats["graph_steps"]}])


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tiny_tokenizer(vocab_size: int = 128):
    """A character-level fast tokenizer whose every id decodes to one character (ids 0-3 are special:
    <unk>, <s>, </s>, <pad>), so tests get real text, stop strings and chat templates without a download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, Regex
    from transformers import PreTrainedTokenizerFast
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    chars = [chr(c) for c in range(32, 127)] + [chr(c) for c in range(161, 161 + vocab_size)]
    vocab = {t: i for i, t in enumerate(specials + chars[:vocab_size - len(specials)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast
