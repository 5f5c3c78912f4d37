"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import BenchPreset, ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="llama",
        architectures=("LlamaForCausalLM", "MistralForCausalLM"),
        model_types=("llama", "mistral"),
        config="fastgen_llama.model:LlamaConfig",
        model="fastgen_llama.model:LlamaForCausalLM",
        weights="fastgen_llama.model:weight_map",
        description="Llama 1/2/3, SmolLM, Mistral (GQA, RMSNorm, SwiGLU, RoPE, sliding window)",
    ))


@hookimpl
def register_bench_presets(register):
    register(BenchPreset("llama-2-7b", "fastgen_llama.presets:llama_2_7b", "Llama-2-7B"))
    register(BenchPreset("tiny-llama", "fastgen_llama.presets:tiny_llama", "a 2-layer Llama for CPU smoke tests"))
