"""The kernel plan: one validated setting (EngineConfig.kernels, or FASTGEN_KERNELS read by config.py alone), decided
once per engine from the device, dtype, model and libraries, printed by `fastgen plan`, logged at start and carried
by bench records; unknown operations and kernels are refused naming the allowed ones."""
import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import fastgen_core as fg
from fastgen_core import kernels
from fastgen_core.config import EngineConfig
from fastgen_core.ops import OPS, KernelPlan, ModelFacts

ROOT = Path(__file__).resolve().parents[1]


def cuda_plan(setting="auto", **kw):
    return KernelPlan.build(setting, "cuda", "bfloat16", have_cupy=True, have_triton=True, **kw)


def test_every_operation_ends_with_its_reference_and_names_are_unique():
    names = [k.name for ks in OPS.values() for k in ks if k.name != "reference"]
    assert len(names) == len(set(names)), "a kernel name belongs to one operation"
    assert all(ks[-1].name == "reference" for ks in OPS.values())


def test_the_plan_keeps_what_the_device_dtype_model_and_libraries_allow():
    phi = cuda_plan(model=ModelFacts(32, 32, 80))
    assert phi.kept["decode_attention"] == ("mha_decode", "paged_decode", "padded_sdpa", "reference")
    gqa = cuda_plan(model=ModelFacts(32, 8, 128))
    assert "mha_decode" not in gqa.kept["decode_attention"]
    assert gqa.dropped["decode_attention"]["mha_decode"] == "needs no GQA, head_dim 64, 80 or 128"
    fp32 = KernelPlan.build("auto", "cuda", "float32", have_cupy=True, have_triton=True)
    assert fp32.kept["linear"] == ("reference",) and fp32.dropped["linear"]["gemv"] == "needs bfloat16 or float16"
    no_triton = KernelPlan.build("auto", "cuda", "bfloat16", have_cupy=True, have_triton=False)
    assert no_triton.kept["prefill_attention"] == ("sdpa", "reference")
    cpu = KernelPlan.build("auto", "cpu", "float32", have_cupy=False, have_triton=False)
    assert all(names == ("reference",) for names in cpu.kept.values())


def test_reference_and_one_kernel_per_operation():
    ref = cuda_plan("reference")
    assert all(names == ("reference",) for names in ref.kept.values()) and not ref.allowed
    one = cuda_plan({"decode_attention": "paged_decode", "rms_norm": "auto"})
    assert one.kept["decode_attention"] == ("paged_decode", "reference")
    assert one.kept["rms_norm"] == cuda_plan().kept["rms_norm"] and one.allows("gemv_ksplit")
    assert one.dropped["decode_attention"]["mha_decode"] == "off by the kernels setting"


@pytest.mark.parametrize("setting, message", [
    ({"decode_atention": "paged_decode"}, r"unknown operation 'decode_atention'; allowed: add3_layer_norm, "),
    ({"decode_attention": "flash"}, r"decode_attention has no kernel 'flash'; allowed: auto, fused_rotary_decode, "
                                    r"mha_decode, paged_decode, padded_sdpa, reference"),
    ("triton", r"kernels must be 'auto', 'reference' or op=kernel pairs"),
    (7, r"kernels must be 'auto', 'reference' or a mapping of operation to kernel name, got 7"),
    ("rms_norm=", r"'rms_norm=' is not op=kernel"),
])
def test_unknown_names_are_refused_naming_the_allowed_ones(setting, message):
    with pytest.raises(fg.ConfigError, match=message):
        cuda_plan(setting)


def test_the_setting_is_validated_when_the_config_is_made_and_when_the_engine_is_built(tiny_model_dir):
    with pytest.raises(fg.ConfigError, match="kernels must be"):
        EngineConfig("m", device="cpu", kernels=["rms_norm"])
    assert EngineConfig("m", device="cpu", kernels="rms_norm=reference").kernels == {"rms_norm": "reference"}
    with pytest.raises(fg.ConfigError, match=r"unknown operation 'warp_drive'; allowed: "):
        fg.pipeline(str(tiny_model_dir[0]), device="cpu", kernels={"warp_drive": "on"})


def test_fastgen_kernels_is_the_settings_default(monkeypatch):
    monkeypatch.setenv("FASTGEN_KERNELS", "decode_attention=paged_decode")
    assert EngineConfig("m", device="cpu").kernels == {"decode_attention": "paged_decode"}
    assert EngineConfig("m", device="cpu", kernels="auto").kernels == "auto"      # given beats the environment
    monkeypatch.setenv("FASTGEN_KERNELS", "fast")
    with pytest.raises(fg.ConfigError, match="FASTGEN_KERNELS must be 'auto', 'reference' or op=kernel pairs"):
        EngineConfig("m", device="cpu")


def test_a_family_plans_its_own_operations():
    phi = pytest.importorskip("fastgen_phi.model").PhiForCausalLM
    plan = cuda_plan({"gelu_new": "gelu_new"}, extra_ops=phi.kernel_ops)
    assert plan.kept["gelu_new"] == ("gelu_new", "reference") and plan.kept["fc1_gelu_new"][0] == "gemv_gelu_new"
    assert not plan.allows("gelu_new_paired") and plan.allows("gemm_gelu_new")
    with pytest.raises(fg.ConfigError, match="unknown operation 'gelu_new'"):
        cuda_plan({"gelu_new": "gelu_new"})                  # without the family, its operation is unknown


def test_only_the_config_module_reads_fastgen_environment_variables():
    """os.environ.get / os.getenv / os.environ[...] / "X" in os.environ with a FASTGEN_* name, anywhere in the
    core or a plugin's package, except fastgen_core/config.py."""
    files = [*(ROOT / "fastgen_core").rglob("*.py"), *(ROOT / "plugins").glob("*/src/**/*.py")]
    readers = []
    for f in files:
        if f == ROOT / "fastgen_core" / "config.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            name = None
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv", "environ.get"):
                name = node.args[0] if node.args else None
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ") \
                    and isinstance(node.ctx, ast.Load):
                name = node.slice
            elif isinstance(node, ast.Compare) and any(ast.unparse(c) in ("os.environ", "environ")
                                                       for c in node.comparators):
                name = node.left
            if isinstance(name, ast.Constant) and str(name.value).startswith("FASTGEN_"):
                readers.append(f"{f.relative_to(ROOT)}:{node.lineno} reads {name.value}")
            elif name is not None and not isinstance(name, ast.Constant):      # a name chosen at run time
                readers.append(f"{f.relative_to(ROOT)}:{node.lineno} reads the variable {ast.unparse(name)}")
    assert files and not readers, readers


def test_the_engine_logs_its_plan_and_bench_records_carry_it(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="fastgen.engine"):
        p = fg.pipeline(str(tiny_model_dir[0]), device="cpu")
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "fastgen.engine"]
        assert lines[0] == "kernel plan for cpu, float32"
        assert any(x.strip().startswith("decode_attention") for x in lines)
        assert p.engine.kernel_plan.as_record()["decode_attention"] == ["reference"]
    finally:
        p.destroy()


@pytest.mark.parametrize("preset, expect", [
    ("phi-2", ["decode_attention   mha_decode", "gelu_new           gelu_new_paired"]),
    ("llama-2-7b", ["decode_attention   mha_decode"]),
    ("mixtral-8x7b", ["prefill_attention  exact_sdpa", "mha_decode: needs no GQA"]),
    ("pythia-1b", ["decode_attention   paged_decode", "mha_decode: needs no GQA, head_dim 64, 80 or 128"]),
])
def test_fastgen_plan_prints_a_models_plan_without_running_it(preset, expect):
    r = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plan", "--preset", preset], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{preset}: kernel plan for cuda, bfloat16")
    assert all(e in r.stdout for e in expect), r.stdout


def test_fastgen_plan_json_and_bad_input(tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plan", "--model", str(tiny_model_dir[0]),
                        "--device", "cpu", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == set(OPS) and json.loads(r.stdout)["rms_norm"] == ["reference"]
    r = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plan", "--preset", "phi-2", "--kernels",
                        "rms_norm=fast"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "rms_norm has no kernel 'fast'; allowed: auto, rms_norm_vec, rms_norm, reference" \
        in r.stderr, r.stderr


def test_plan_lookups_are_constant_time_and_a_default_plan_serves_layers_without_an_engine():
    plan = kernels.default_plan()
    assert plan is kernels.active_plan() and plan.setting == "auto"
    assert plan.allows("some_plugins_kernel") and not plan.allows("fused_rotary_decode")
    assert isinstance(plan.allowed, frozenset) and isinstance(plan.known, frozenset)
