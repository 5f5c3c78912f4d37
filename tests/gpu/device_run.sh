#!/bin/bash
# One device call: environment, install, GPU tests, benchmarks. Results under $OUT (see docs/performance.md).
# usage: bash tests/gpu/device_run.sh <stage>   stage: probe | final
export PYTHONUNBUFFERED=1
STAGE=${1:-probe}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm --format=csv | tee $OUT/env.txt
python3 - <<'PY' 2>&1 | tee -a $OUT/env.txt
import torch, transformers, inspect
print("torch", torch.__version__, "transformers", transformers.__version__)
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton missing", e)
try:
    import torch.nn.attention.varlen as v; print("varlen_attn", inspect.signature(v.varlen_attn))
except Exception as e: print("no varlen", e)
PY
# wheels carried in .whl/ (ignored by git; name it in the device call's carry), e.g. the server extras that
# the GPU machine lacks: fastapi starlette uvicorn pydantic pydantic-core annotated-types typing-inspection
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING
for p in plugins/*/; do python3 -m pip install -q --no-deps --no-build-isolation -e $p 2>&1 | grep -v WARNING; done
python3 -m fastgen_core.cli plugins | tee -a $OUT/env.txt
case "$STAGE" in sweep|llama7b|server) ;; *) timeout 110 python3 -m pytest -q -rs -s tests/gpu -p no:cacheprovider 2>&1 | tee $OUT/gpu_tests.log | tail -40 ;; esac
B="python3 -m fastgen_core.cli bench --output $OUT/bench.jsonl"
if [ "$STAGE" = probe ]; then
  $B --preset llama-2-7b --num-layers 8 --num-requests 32 --prompt-mean 512 --gen-mean 64 --online 1,8 \
     --peer static,continuous --peer-batch-size 32 --tag probe --plot $OUT/llama8L.png 2>&1 | tail -14
  FASTGEN_ATTENTION=torch $B --preset llama-2-7b --num-layers 8 --num-requests 32 --prompt-mean 512 --gen-mean 64 \
     --peer none --tag probe-torch-attention 2>&1 | tail -4
  timeout 200 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 --peer none --tag probe 2>&1 | tail -4
fi
if [ "$STAGE" = profile ]; then
  python3 tests/gpu/profile_steps.py phi-2 768 32 2>&1 | tee $OUT/profile.txt | head -30
  python3 tests/gpu/profile_steps.py phi-2 2048 32 2>&1 | head -1 | tee -a $OUT/profile.txt
  for b in 768 2048; do
    timeout 100 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 --peer none \
      --max-ragged-batch-size $b --tag profile 2>&1 | tail -2
  done
fi
if [ "$STAGE" = sweep ]; then
  (cd tests/gpu && timeout 300 python3 agreement_sweep.py 2>&1 | grep SWEEP | tee $OUT/sweep.txt)
fi
if [ "$STAGE" = confirm ]; then
  grep AGREEMENT $OUT/gpu_tests.log | cut -c1-400
  for m in falcon-7b llama-2-7b; do
    timeout 100 $B --preset $m --num-requests 64 --prompt-mean 1200 --gen-mean 60 --peer none \
      --max-ragged-batch-size 2048 2>&1 | tail -2
  done
fi
if [ "$STAGE" = phi2 ]; then
  timeout 400 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 128 --online 1,2,4,8,16,32 \
     --max-ragged-batch-size 2048 --peer static,continuous --peer-batch-size 64 --plot $OUT/phi2.png 2>&1 | tail -16
fi
if [ "$STAGE" = s3a ]; then
  grep -E "passed|failed|Error|SKIP" $OUT/gpu_tests.log | tail -8
  timeout 150 python3 tests/gpu/profile_steps.py phi-2 2048 128 2>&1 | tee $OUT/profile.txt | head -90
  timeout 240 $B --preset llama-2-7b --num-requests 64 --prompt-mean 1200 --gen-mean 60 --max-ragged-batch-size 2048 \
     --peer static,continuous --peer-batch-size 64 2>&1 | tail -5
fi
if [ "$STAGE" = kernels ]; then
  # the CuPy kernels against their references, then A/B of whole runs (reference first, same process order)
  grep -E "passed|failed|Error" $OUT/gpu_tests.log | tail -3
  timeout 120 python3 -m pytest -q tests/gpu/test_kernels_gpu.py -p no:cacheprovider 2>&1 | tail -5
  for k in reference cupy reference cupy; do
    FASTGEN_KERNELS=$k timeout 100 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 \
      --peer none --max-ragged-batch-size 2048 --tag "kernels-$k" 2>&1 | tail -2
    FASTGEN_KERNELS=$k timeout 100 $B --preset llama-2-7b --num-requests 64 --prompt-mean 1200 --gen-mean 60 \
      --peer none --max-ragged-batch-size 2048 --tag "kernels-$k" 2>&1 | tail -2
  done
fi
if [ "$STAGE" = tp ]; then        # needs 2 GPUs (kind nvidia-h100-x2)
  FASTGEN_TP_CUDA_GRAPHS=1 timeout 200 python3 -m pytest -q tests/gpu/test_tp_gpu.py -p no:cacheprovider 2>&1 | tail -5
  for g in 0 1; do
    FASTGEN_TP_CUDA_GRAPHS=$g timeout 150 $B --preset llama-2-7b --num-requests 64 --prompt-mean 1200 --gen-mean 60 \
      --peer none --max-ragged-batch-size 2048 --tensor-parallel-size 2 --tag "tp2-graphs$g" 2>&1 | tail -2
  done
  timeout 150 $B --preset llama-2-7b --num-requests 64 --prompt-mean 1200 --gen-mean 60 --peer none \
    --max-ragged-batch-size 2048 --tag tp1 2>&1 | tail -2
fi
if [ "$STAGE" = server ]; then
  timeout 200 python3 -m pytest -q -s tests/gpu/test_server_gpu.py -p no:cacheprovider 2>&1 | tee $OUT/server_gpu.log | tail -15
fi
if [ "$STAGE" = llama7b ]; then
  timeout 60 python3 -m pytest -q tests/gpu/test_graphs_gpu.py tests/gpu/test_engine_gpu.py -p no:cacheprovider 2>&1 | tail -2
  timeout 240 $B --preset llama-2-7b --num-requests 64 --prompt-mean 1200 --gen-mean 60 --max-ragged-batch-size 2048 \
     --peer static,continuous --peer-batch-size 64 2>&1 | tail -5
fi
if [ "$STAGE" = final2 ]; then
  grep -E "passed|failed|Error" $OUT/gpu_tests.log | tail -3
  timeout 330 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 128 --online 1,2,4,8,16,32 \
     --max-ragged-batch-size 2048 --peer static,continuous --peer-batch-size 64 --plot $OUT/phi2.png 2>&1 | tail -12
  timeout 150 $B --preset mixtral-small --num-requests 64 --prompt-mean 1200 --gen-mean 60 --online 1,8,32 \
     --max-ragged-batch-size 2048 --peer static,continuous --peer-batch-size 64 --plot $OUT/mixtral.png 2>&1 | tail -8
  timeout 60 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 --peer none \
     --max-ragged-batch-size 2048 --no-cuda-graphs --tag eager 2>&1 | tail -2
fi
if [ "$STAGE" = graphab ]; then
  grep -E "passed|failed|Error" $OUT/gpu_tests.log | tail -5
  timeout 150 python3 tests/gpu/graph_ab.py phi-2 64 2>&1 | grep -E "^AB|Error" | tee $OUT/graph_ab.txt
  timeout 150 python3 tests/gpu/graph_ab.py mixtral-small 64 2>&1 | grep -E "^AB|Error" | tee -a $OUT/graph_ab.txt
fi
if [ "$STAGE" = graphs ]; then
  grep -E "passed|failed|Error" $OUT/gpu_tests.log | tail -5
  for g in "" "--no-cuda-graphs"; do
    timeout 100 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 --online 8,32 --peer none \
      --max-ragged-batch-size 2048 --tag "graphs-ab $g" $g 2>&1 | tail -4
    timeout 100 $B --preset mixtral-small --num-requests 64 --prompt-mean 1200 --gen-mean 60 --online 32 \
      --peer none --max-ragged-batch-size 2048 --tag "graphs-ab $g" $g 2>&1 | tail -3
  done
fi
if [ "$STAGE" = moe ]; then
  grep AGREEMENT $OUT/gpu_tests.log | cut -c1-300
  (cd tests/gpu && timeout 150 python3 moe_agreement_probe.py cuda 2>&1 | grep MOEPROBE | tee $OUT/moe_probe.txt)
  python3 - <<'PY'
import torch, torch.nn.functional as F
for dt in (torch.bfloat16, torch.float16):
    x = torch.randn(40, 64, dtype=dt, device="cuda"); w = torch.randn(3, 32, 64, dtype=dt, device="cuda")
    offs = torch.tensor([3, 3, 40], dtype=torch.int32, device="cuda")
    try:
        y = F.grouped_mm(x, w.transpose(-2, -1), offs=offs)
        ref = torch.cat([x[:3] @ w[0].T, x[3:] @ w[2].T]); print("grouped_mm", dt, "ok", torch.equal(y, ref))
    except Exception as e: print("grouped_mm", dt, "ERR", str(e)[:200])
PY
fi
if [ "$STAGE" = mixtral ] || [ "$STAGE" = moe ]; then
  timeout 200 $B --preset mixtral-small --num-requests 64 --prompt-mean 1200 --gen-mean 60 --online 1,8,32 \
     --max-ragged-batch-size 2048 --peer static,continuous --peer-batch-size 64 --plot $OUT/mixtral.png 2>&1 | tail -12
  if [ "$STAGE" = mixtral ]; then
    timeout 100 $B --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 --peer none --tag budget-768 \
      2>&1 | tail -2
  fi
fi
