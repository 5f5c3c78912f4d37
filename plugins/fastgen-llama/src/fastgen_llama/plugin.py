"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import ModelFamily, hookimpl


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
