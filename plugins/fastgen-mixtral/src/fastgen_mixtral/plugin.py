"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import ModelFamily, hookimpl


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="mixtral",
        architectures=("MixtralForCausalLM",),
        model_types=("mixtral",),
        config="fastgen_mixtral.model:MixtralConfig",
        model="fastgen_mixtral.model:MixtralForCausalLM",
        weights="fastgen_mixtral.model:weight_map",
        description="Mixtral 8x7B / 8x22B (Llama-style blocks, top-k routed SwiGLU experts, sliding window)",
    ))
