"""Hook implementations only: cheap to import (no torch)."""
from fastgen_core import ModelFamily, hookimpl

FASTGEN_PLUGIN_API = 3       # the fastgen plugin API version this plugin is written for


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="opt",
        architectures=("OPTForCausalLM",),
        model_types=("opt",),
        config="fastgen_opt.model:OPTConfig",
        model="fastgen_opt.model:OPTForCausalLM",
        weights="fastgen_opt.model:weight_map",
        description="Meta OPT (learned positions with offset 2, pre- or post-LayerNorm, ReLU MLP, "
                    "project_in/project_out when word_embed_proj_dim != hidden_size)",
    ))
