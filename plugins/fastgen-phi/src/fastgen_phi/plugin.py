"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import BenchPreset, ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="phi",
        architectures=("PhiForCausalLM",),
        model_types=("phi",),
        config="fastgen_phi.model:PhiConfig",
        model="fastgen_phi.model:PhiForCausalLM",
        weights="fastgen_phi.model:weight_map",
        description="Phi-1, Phi-1.5, Phi-2 (parallel attention and MLP, partial rotary, LayerNorm, biases)",
    ))


@hookimpl
def register_bench_presets(register):
    register(BenchPreset("phi-2", "fastgen_phi.presets:phi_2", "Phi-2 (2.7B)"))
