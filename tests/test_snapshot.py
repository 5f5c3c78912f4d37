"""Engine snapshots: saved in the engine's layout, reloaded without the weight map, same tokens; bad
snapshots are refused naming the problem."""
import json

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from fastgen_core import pipeline
from fastgen_core.cli import main
from fastgen_core.errors import ConfigError, WeightLoadError
from fastgen_core.snapshot import META, TENSORS
from fastgen_core.testing import hf_greedy, random_prompts, save_tiny_model


def _roundtrip(src, out, prompts, **kw):
    p = pipeline(str(src), device="cpu", **kw)
    want = [o.token_ids for o in p(prompts, max_new_tokens=6, ignore_eos=True)]
    p.engine.save_snapshot(out)
    p.destroy()
    q = pipeline(str(out), device="cpu", **kw)
    got = [o.token_ids for o in q(prompts, max_new_tokens=6, ignore_eos=True)]
    assert q.engine.snapshot is not None
    q.destroy()
    return want, got


def test_snapshot_reloads_with_the_same_tokens_and_engine_names(tiny_model_dir, tmp_path):
    src, ref = tiny_model_dir
    prompts = random_prompts(4, 128, 3, 40, seed=5)
    want, got = _roundtrip(src, tmp_path / "snap", prompts)
    assert got == want == [hf_greedy(ref, q, 6) for q in prompts]
    with safe_open(str(tmp_path / "snap" / TENSORS), framework="pt") as sf:
        names = set(sf.keys())
    # the engine's fused layout, not the checkpoint's
    assert "layers.0.self_attn.qkv_proj.weight" in names and not any("q_proj" in n for n in names)
    assert (tmp_path / "snap" / "tokenizer.json").is_file()          # text prompts still work
    q = pipeline(str(tmp_path / "snap"), device="cpu")
    assert q("hello", max_new_tokens=3, ignore_eos=True)[0].generated_length == 3
    q.destroy()


def test_snapshot_of_a_moe_with_tied_embeddings(tmp_path):
    from transformers import MixtralConfig
    cfg = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=128, tie_word_embeddings=True)
    save_tiny_model(cfg, tmp_path / "m")
    want, got = _roundtrip(tmp_path / "m", tmp_path / "snap", random_prompts(3, 96, 2, 30))
    assert got == want
    meta = json.loads((tmp_path / "snap" / META).read_text())
    assert meta["family"] == "mixtral" and meta["aliases"] == {"lm_head.weight": "embed_tokens.weight"}


def test_cli_snapshot_and_bf16(tiny_model_dir, tmp_path, capsys):
    assert main(["snapshot", "--model", str(tiny_model_dir[0]), "--dtype", "bfloat16", str(tmp_path / "s")]) == 0
    assert "written to" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / META).read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "s" / TENSORS), framework="pt") as sf:
        assert str(sf.get_tensor("embed_tokens.weight").dtype) == "torch.bfloat16"
    p = pipeline(str(tmp_path / "s"), device="cpu", dtype="bfloat16")
    assert p([5, 6, 7], max_new_tokens=2)[0].generated_length == 2
    p.destroy()


def test_bad_snapshots_are_refused_by_name(tiny_model_dir, tmp_path):
    snap = tmp_path / "snap"
    p = pipeline(str(tiny_model_dir[0]), device="cpu")
    p.engine.save_snapshot(snap)
    p.destroy()
    with pytest.raises(ConfigError, match="is a snapshot of a 'llama' model, not 'mixtral'"):
        pipeline(str(snap), device="cpu", family="mixtral")
    with pytest.raises(ConfigError, match="not a fastgen snapshot"):
        pipeline(str(tiny_model_dir[0]), device="cpu", load_format="snapshot")
    meta = json.loads((snap / META).read_text())
    (snap / META).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ConfigError, match="version 99 is not one this fastgen reads"):
        pipeline(str(snap), device="cpu")
    (snap / META).write_text(json.dumps(meta))
    with safe_open(str(snap / TENSORS), framework="pt") as sf:
        tensors = {n: sf.get_tensor(n) for n in sf.keys()}
    down = tensors.pop("layers.1.mlp.down_proj.weight")
    save_file(tensors, str(snap / TENSORS))
    with pytest.raises(WeightLoadError, match=r"missing \['layers.1.mlp.down_proj.weight'\]"):
        pipeline(str(snap), device="cpu")
    save_file({**tensors, "layers.1.mlp.down_proj.weight": down[:, :3].contiguous()}, str(snap / TENSORS))
    with pytest.raises(WeightLoadError, match=r"snapshot tensor 'layers.1.mlp.down_proj.weight' has shape "
                                              r"\(64, 3\) but the model expects \(64, 128\)"):
        pipeline(str(snap), device="cpu")
    with pytest.raises(ConfigError, match="is the model directory itself"):
        pipeline(str(snap), device="cpu", load_format="dummy").engine.save_snapshot(snap)


def test_streamed_load_fills_every_tensor_across_chunk_edges(tmp_path):
    """The CUDA fast path (large reads into pinned buffers, tensors cut by chunk edges) run on CPU tensors with
    a chunk far smaller than the tensors: every parameter gets exactly the snapshot's bytes."""
    import torch
    from safetensors.torch import save_file

    from fastgen_core import snapshot
    tensors = {"a.weight": torch.randn(33, 7), "b.bias": torch.randn(5).to(torch.bfloat16),
               "c.weight": torch.randn(3, 4, 9).to(torch.float16), "d": torch.arange(11)}
    path = tmp_path / "s.safetensors"
    save_file(tensors, str(path))
    header, start = snapshot._header(path)
    targets = {k: torch.full_like(v, 7) for k, v in tensors.items()}
    assert snapshot._stream(path, header, start, targets, chunk=37, on_cpu=True)
    for k, v in tensors.items():
        assert torch.equal(targets[k], v), k
    # a target of another dtype is left to the tensor-by-tensor path (nothing copied here)
    wrong = {**targets, "a.weight": torch.zeros(33, 7, dtype=torch.float64)}
    assert not snapshot._stream(path, header, start, wrong, chunk=37, on_cpu=True)
