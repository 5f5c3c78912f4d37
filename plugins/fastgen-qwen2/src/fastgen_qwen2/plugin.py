"""Hook implementations only. Imported for every fastgen start-up, so it must stay cheap: no torch here;
the model, its config and its weight map are named as lazy "module:attr" strings."""
from fastgen_core import ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="qwen2",
        architectures=("Qwen2ForCausalLM",),
        model_types=("qwen2",),
        config="fastgen_qwen2.model:Qwen2Config",
        model="fastgen_qwen2.model:Qwen2ForCausalLM",
        weights="fastgen_qwen2.weights:weight_map",
        description="Qwen2, Qwen2.5 (GQA, QKV biases, RMSNorm, SwiGLU, RoPE, per-layer sliding window)",
    ))
    register(ModelFamily(
        name="qwen3",
        architectures=("Qwen3ForCausalLM",),
        model_types=("qwen3",),
        config="fastgen_qwen2.model:Qwen2Config",
        model="fastgen_qwen2.model:Qwen2ForCausalLM",
        weights="fastgen_qwen2.weights:weight_map",
        description="Qwen3 dense (Qwen2's block with per-head q/k RMSNorm, optional attention biases)",
    ))
