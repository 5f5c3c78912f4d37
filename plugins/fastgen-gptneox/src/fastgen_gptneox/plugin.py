"""Hook implementations only: imported at every fastgen start-up, so no torch here; the config, model and
weight map are lazy "module:attr" strings."""
from fastgen_core import BenchPreset, ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="gptneox",
        architectures=("GPTNeoXForCausalLM",),
        model_types=("gpt_neox",),
        config="fastgen_gptneox.model:GPTNeoXConfig",
        model="fastgen_gptneox.model:GPTNeoXForCausalLM",
        weights="fastgen_gptneox.weights:weight_map",
        description="GPT-NeoX-20B, Pythia (parallel or sequential residual, partial rotary, LayerNorm with bias)",
    ))


@hookimpl
def register_bench_presets(register):
    register(BenchPreset("pythia-1b", "fastgen_gptneox.presets:pythia_1b", "Pythia-1B (GPT-NeoX)"))
