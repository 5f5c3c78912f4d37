"""One declaration of the generate options (SamplingParams' fields): the HTTP request models, the command line's
flags and the engine's params are derived from it; greedy is decided by one rule; each engine default has one
home (EngineConfig), which the pipeline and the command lines read."""
import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import fastgen_core
from fastgen_core.config import EngineConfig
from fastgen_core.errors import InvalidRequestError
from fastgen_core.sampling import OPTIONS, SamplingParams, add_cli_flags, from_cli_flags, wire_fields
from fastgen_core.server import protocol

PACKAGE = Path(fastgen_core.__file__).parent

# the request shapes as clients know them (OpenAI's, vLLM's extras, MII's, the native endpoint's): pinned
SHAPES = {
    protocol.CompletionRequest: {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                                 "stream_options", "stop", "seed", "user", "presence_penalty", "frequency_penalty",
                                 "logit_bias", "top_k", "min_tokens", "ignore_eos", "stop_token_ids",
                                 "repetition_penalty", "echo", "logprobs", "best_of", "suffix", "metadata", "store",
                                 "service_tier", "safety_identifier", "prompt_cache_key", "structured_outputs",
                                 "response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar"},
    protocol.ChatCompletionRequest: {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                                     "top_p", "n", "stream", "stream_options", "stop", "seed", "user",
                                     "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_tokens",
                                     "ignore_eos", "stop_token_ids", "repetition_penalty", "logprobs", "top_logprobs",
                                     "tools", "tool_choice", "response_format", "metadata", "store", "service_tier",
                                     "safety_identifier", "prompt_cache_key", "parallel_tool_calls", "functions",
                                     "function_call", "reasoning_effort", "verbosity", "modalities", "audio",
                                     "prediction", "web_search_options", "structured_outputs", "guided_json",
                                     "guided_regex", "guided_choice", "guided_grammar"},
    protocol.MIIRequest: {"prompts", "max_length", "max_new_tokens", "min_new_tokens", "do_sample", "top_p", "top_k",
                          "temperature", "stop", "ignore_eos", "return_full_text", "stream"},
    protocol.GenerateRequest: {"prompts", "stream", "max_new_tokens", "min_new_tokens", "do_sample", "temperature",
                               "top_k", "top_p", "seed", "stop", "stop_token_ids", "ignore_eos", "return_full_text",
                               "repetition_penalty", "presence_penalty", "frequency_penalty", "structured_outputs"},
}


@pytest.mark.parametrize("model", SHAPES, ids=lambda m: m.__name__)
def test_request_shapes_are_the_ones_clients_know(model):
    assert set(model.model_fields) == SHAPES[model]


@pytest.mark.parametrize("model,front_end", [(protocol.CompletionRequest, "openai"),
                                             (protocol.ChatCompletionRequest, "openai"),
                                             (protocol.MIIRequest, "mii"), (protocol.GenerateRequest, "native")],
                         ids=lambda x: getattr(x, "__name__", x))
def test_the_http_options_are_the_declared_ones(model, front_end):
    for name, _, default, bounds, _ in wire_fields(front_end):
        f = model.model_fields[name]
        got = f.default_factory() if f.default_factory is not None else f.default
        assert got == ([] if default is list else default), name
        constraints = {k: getattr(m, k) for m in f.metadata for k in ("ge", "gt", "le") if getattr(m, k, None) is not None}
        assert constraints == bounds, name


def test_every_option_is_declared_with_its_meaning_and_every_field_is_an_option():
    assert set(OPTIONS) == {f.name for f in dataclasses.fields(SamplingParams)}
    assert all(o.doc for o in OPTIONS.values())


def _params(front_end: str, **body) -> SamplingParams:
    model = {"openai": protocol.CompletionRequest, "mii": protocol.MIIRequest, "native": protocol.GenerateRequest}
    shape = {"openai": {"prompt": "x"}, "mii": {"prompts": "x"}, "native": {"prompts": "x"}}[front_end]
    return SamplingParams.from_wire(front_end, model[front_end].model_validate({**shape, **body}))


def _cli(*flags) -> dict:
    p = argparse.ArgumentParser()
    add_cli_flags(p)
    return from_cli_flags(p.parse_args(list(flags)))


def test_temperature_0_is_greedy_on_every_front_end_and_absent_means_each_ones_default():
    assert _params("openai", temperature=0).greedy and _params("mii", temperature=0).greedy
    assert _params("native", do_sample=True, temperature=0).greedy and SamplingParams(**_cli("--temperature", "0")).greedy
    openai, mii, native, cli = _params("openai"), _params("mii"), _params("native"), SamplingParams(**_cli())
    assert not openai.greedy and openai.temperature == 1.0 and openai.top_p == 1.0      # OpenAI samples at 1.0
    assert not mii.greedy and mii.top_p == 0.9 and mii.top_k == 0                       # MII's defaults
    assert native.greedy and cli.greedy and cli.max_new_tokens == 64                    # the pipeline's
    assert _params("openai", top_k=-1).top_k == 0 and _params("openai", stop=[]).stop == []
    with pytest.raises(InvalidRequestError, match="stop must be a list of non-empty strings"):
        _params("openai", stop="")
    assert _params("openai", min_tokens=3, seed=7).min_new_tokens == 3


def test_a_sampling_flag_means_sampling_and_temperature_0_refuses_the_others():
    assert _cli("--seed", "3") == {"max_new_tokens": 64, "min_new_tokens": 0, "stop": None, "ignore_eos": False,
                                   "do_sample": True, "seed": 3}
    with pytest.raises(InvalidRequestError, match="--temperature 0 means greedy decoding, but --top-k, --seed only "
                                                  "act when sampling"):
        _cli("--temperature", "0", "--top-k", "5", "--seed", "1")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_greedy_is_decided_in_one_place():
    """No module but sampling.py compares a temperature with a number: the rule is SamplingParams.greedy."""
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = [n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "")
                         for n in [node.left, *node.comparators]]
                if any("temperature" in n for n in names) and any(isinstance(c, ast.Constant) and c.value == 0
                                                                  for c in [node.left, *node.comparators]):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == ["sampling.py:" + str(_greedy_line())], found


def _greedy_line() -> int:
    tree = ast.parse((PACKAGE / "sampling.py").read_text())
    prop = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "greedy")
    return next(n.lineno for n in ast.walk(prop) if isinstance(n, ast.Compare))


# the engine's budgets and memory shares: their defaults appear in EngineConfig and nowhere else
BUDGETS = {"max_ragged_batch_size", "max_ragged_sequence_count", "gpu_memory_fraction", "cpu_kv_cache_bytes",
           "cuda_graph_max_batch"}


def test_engine_defaults_have_one_home():
    """No default of an engine option is restated outside config.py: no command-line flag named after an
    EngineConfig field (but --seed, which bench also seeds its workload with) has a literal default other than
    None, and no function parameter named after a budget has one."""
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)} - {"seed"}
    restated = []
    for path, tree in _modules():
        if path.name == "config.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
                defaults = node.args.defaults + [d for d in node.args.kw_defaults]
                restated += [f"{path.relative_to(PACKAGE)}:{node.lineno} {a.arg}={d.value!r}"
                             for a, d in zip(args, defaults) if a.arg in BUDGETS and isinstance(d, ast.Constant)
                             and d.value is not None]
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value).lstrip("-").replace("-", "_")
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                if name in engine_fields and isinstance(default, ast.Constant) and default.value is not None:
                    restated.append(f"{path.relative_to(PACKAGE)}:{node.lineno} --{name}={default.value!r}")
    assert not restated, f"engine defaults restated outside EngineConfig: {restated}"
    import inspect
    sig = inspect.signature(fastgen_core.pipeline)
    assert sig.parameters["max_ragged_batch_size"].default == EngineConfig.max_ragged_batch_size == 768


def test_choices_of_one_prompt_get_their_own_seeds():
    seeded = SamplingParams(do_sample=True, seed=2 ** 63 - 1).for_choices(3)
    assert [p.seed for p in seeded] == [2 ** 63 - 1, 0, 1] and len({id(p) for p in seeded}) == 3
    assert [p.seed for p in SamplingParams().for_choices(2)] == [None, None]
