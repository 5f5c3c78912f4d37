"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import BenchPreset, ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="falcon",
        architectures=("FalconForCausalLM", "RWForCausalLM"),
        # "RefinedWeb" (40B) and "RefinedWebModel" (7B) are the pre-transformers remote-code configs.
        model_types=("falcon", "RefinedWeb", "RefinedWebModel"),
        config="fastgen_falcon.config:FalconConfig",
        model="fastgen_falcon.model:FalconForCausalLM",
        weights="fastgen_falcon.model:weight_map",
        description="Falcon 7B (multi-query, parallel attention), 40B/180B (grouped KV, two layer norms), "
                    "sequential layouts and legacy RW configs; rotary only (no ALiBi)",
    ))


@hookimpl
def register_bench_presets(register):
    register(BenchPreset("falcon-7b", "fastgen_falcon.presets:falcon_7b",
                         "Falcon-7B (multi-query, parallel attention)"))
    register(BenchPreset("falcon-40b", "fastgen_falcon.presets:falcon_40b",
                         "Falcon-40B (grouped KV heads, two layer norms)"))
