"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import BenchPreset, ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


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


@hookimpl
def register_bench_presets(register):
    register(BenchPreset("mixtral-small", "fastgen_mixtral.presets:mixtral_small",
                         "Mixtral-8x7B's blocks, 8 layers (11.9B)"))
    register(BenchPreset("mixtral-8x7b", "fastgen_mixtral.presets:mixtral_8x7b", "Mixtral-8x7B (46.7B)"))
