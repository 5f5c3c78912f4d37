#!/bin/bash
# One device call on a lent GPU: install, then the named stages in order. Results under $OUT.
#
#   bash tools/device_run.sh tests,attention,profile,bench
#
# stages:
#   tests      python -m pytest tests/gpu (GPU correctness: kernels vs references, tokens vs transformers)
#   attention  tools/attention_bench.py: prompt-chunk attention, Triton kernel (tile configs) vs SDPA
#   profile    tools/profile_steps.py on Phi-2 at budget 2048, 128 requests: new path, then the old one
#              (FASTGEN_KERNELS=reference FASTGEN_ATTENTION=sdpa), same process order every time
#   bench      fastgen bench offline on the five issue-9 workloads, new path and old path
#   online     fastgen bench --online (clients 1..32) on Phi-2
#   load       tools/load_time.py: engine start from sharded safetensors vs from a snapshot (Llama-2-7B)
#   agreement  bf16 top-1 agreement with transformers, kernels on / all CuPy kernels off / SDPA prefill
#   final      a short confirming run: the GPU tests of the newest code (split decode, async scheduling,
#              fused kernels, fp32 tokens) and Phi-2's per-token latency at 1 and 32 clients, async and sync
#   gemv       tools/gemv_bench.py (decode GEMV vs cuBLAS by shape and rows)
#   smalldecode  tools/attention_bench.py --small-decode-only: decode attention of few sequences, tiles x splits
#   batch1     per-token latency at 1 client (BATCH1_PRESETS, default Phi-2 and Llama-2-7B), the GEMV and
#              add3_layer_norm kernels on and off; Phi-2's batch-1 decode step profile
#   final2     session 5's closing run: GPU tests of the GEMV, expert GEMV and add3_layer_norm kernels (one that
#              fails is switched off for the rest), per-token latency at 1 client (Phi-2 also at 32; Llama-2-7B;
#              Mixtral-8x7B with the expert GEMV on and off), host time per decode step at 128 sequences
#              (sync and async loops), Phi-2 online with the async loop, Phi-2 offline; lines in final2.txt
#   loops      Phi-2 online at 1 and 32 clients, synchronous and asynchronous loops alternated, 3 rounds
#              (whether async_scheduling should become the default)
#   hostprof   cProfile of the host's work in Phi-2's prompt-carrying steps
#   hostdiag   host time outside GPU busy time per step, Phi-2 at 128 and 32 sequences, sync and async loops
#   syncs      where Phi-2's steps make the host wait for the GPU (torch's sync debug mode), async and sync loops
#   s6         session 6: GPU tests of the GEMV (K-split variants, Phi's fc1+gelu_new GEMV), kernels, graphs and
#              engine; the GEMV sweep at one row; Phi-2 at 1 client with fc1+gelu_new fused and not (2 rounds,
#              alternated); host time of prompt-carrying and decode steps the GPU waits for (profiler-free walls),
#              async and sync loops; lines in s6.txt
#   seed       the seed's online scenarios (SEED_RUNS picks: phi2 falcon40b mix-short mix-1200 mix-1024), each a
#              curve over client counts; records in bench.jsonl (plots: python -m fastgen_core.bench.plot)
#   final3     session 6's closing run, most wanted first: GPU tests of the GEMV defaults, graphs, fp32 tokens and
#              bf16 agreement; Phi-2 at 1 client with the K-split GEMV on and off, Llama-2-7B at 1 client;
#              Phi-2 at 32 clients; then the seed scenarios (SEED_RUNS, default phi2,falcon40b,mix-short)
#   s7         session 7: GPU tests of the fused decode-attention kernel, graphs, kernels and fp32 tokens; one
#              layer's small-decode attention, unfused vs fused; Phi-2 at 1 client with the fused kernel on, off,
#              on (FASTGEN_KERNELS_ON: opt-in); Phi-2 at 8 and 32 clients (default path); Llama-2-7B and
#              Mixtral-8x7B (500/150) at 1 client with it on; lines in s7.txt
#   s7b        the same for the fused kernel's second version (loads issued together, a parallel merge), shorter
#   final4     issue 10's must-shows in one call: GPU tests of graphs, async and two-stream equivalence and fp32 tokens;
#              per-token P50 at 1 client (Phi-2 with branch_streams on/off/on, Llama-2-7B, Mixtral-8x7B 500/150); Phi-2
#              at 32 clients; host time per decode step at 128 sequences (async loop); lines in final4.txt
#   final5     issue 10's must-shows again, shortest first (the budget may cut the end): Phi-2 at 1 then 32 clients in
#              one process, Llama-2-7B and Mixtral-8x7B (500/150) at 1 client, host time per decode step at 128
#              sequences, then the GPU tests of fp32 tokens, the async loop and the two streams; lines in final5.txt
#   s8c        session 8's last call: Phi-2 at 32 clients twice in one process (with the allocator's retries), host
#              time per step at 128 sequences (busy time now the union of kernel intervals), then the seed's remaining
#              Mixtral scenarios (1200/60, 1200/128 at 1/16/64 clients; 500/1024 at 16/64); lines in s8c.txt
#   s8         session 8: a parallel layer's MLP on a second stream beside attention (branch_streams): GPU tests;
#              Phi-2 at 1 client off/on/off/on, Falcon-7B at 1 client off/on, Phi-2 at 32 clients on/off; Phi-2 offline
#              with the fork up to 0 / 256 / 4096 tokens a step; Phi-2's batch-1 step profile; lines in s8.txt
#   s9         session 9, issue 9's re-measure: the offline workloads (Phi-2 1200/60 and 1200/128, Llama-2-7B, Falcon-7B,
#              Mixtral-8x7B) on the default path; Phi-2 prompt-only steps of 2048 tokens (every request one token); the
#              Mixtral bf16 agreement probe (router x1/x4/x16, seeds 0-2); where Mixtral's and Falcon-7B's offline steps
#              go; the GPU tests of the async loop (Falcon-40B's layout among them); lines in s9.txt
#   s9b        session 9's kernel A/B: rotary + KV write, add3 + LayerNorm, RMSNorm and SiLU-and-mul in 16-byte vectors
#              (rotary_kv_vec, add3_layer_norm_vec, rms_norm_vec, silu_and_mul_vec), gelu_new two values at a time
#              (gelu_new_paired), the MoE combine in one kernel (moe_combine): their GPU tests; Phi-2's 2048-token
#              prompt steps, Mixtral-8x7B offline, Phi-2 offline and at 1 client, each with them on and off; the bf16
#              agreement tests; fp32 tokens and graphs; lines in s9b.txt
#   final6     (session 9's name for final7's lines, which then had neither the MoE GEMMs' and decode tests nor the
#              Mixtral clients) issue 9's must-shows in one call: the offline workloads (Phi-2 1200/60 and 1200/128, Llama-2-7B,
#              Falcon-7B, Mixtral-8x7B), Phi-2's 2048-token prompt steps, Phi-2 at 1 client, then the GPU tests (kernels,
#              bf16/fp16 agreement, fp32 tokens, graphs) while time lasts; lines in final6.txt
#   rerun9     the spread of issue 9's closest offline results: Phi-2 (1200/60 and 1200/128) twice, then Mixtral-8x7B;
#              lines in rerun9.txt
#   s10        session 9's Triton MoE expert GEMMs (now the default at decode-sized steps) against grouped_mm: their
#              GPU tests; tools/moe_bench.py (grouped_mm against the Triton GEMMs over tiles, Mixtral's expert shapes,
#              8-128 tokens); Mixtral-8x7B offline and at 1 and 16 clients (500/150), moe_triton off and on; lines in
#              s10.txt. (Its decode part, the head_dim split, went with that kernel: it lost its A/B, Speed VIII.)
#   final7     issue 9's must-shows after session 10 (the Triton MoE GEMMs on by default, decode tiles of two stages;
#              FINAL7_ON: opt-ins for the whole call, as FASTGEN_KERNELS_ON): final6's lines, the GPU tests (kernels,
#              MoE GEMMs, decode attention, bf16/fp16 agreement, fp32 tokens, graphs), then Mixtral-8x7B at 1 and 16
#              clients (500/150) while time lasts; lines in final7.txt
#   s12        (session 11's first call, since removed: the exact step it measured changed form after it; its
#              head-major decode cases stay in tools/attention_bench.py --decode-only)
#   s13        fc1 + gelu_new as one GEMM with cuBLASLt's GELU epilogue (fastgen_phi.model.gemm_gelu_new) against fc1
#              then the gelu_new kernel (FASTGEN_KERNELS_OFF=gemm_gelu_new): their GPU tests, tools/gelu_bench.py, Phi's
#              bf16/fp16 agreement, Phi-2's 2048-token prompt step, Phi-2 1200/60 and 1200/128 offline off and on;
#              lines in s13.txt
#   s15        the CUDA-core decode kernel for many sequences without GQA (fastgen_core/layers/mha_decode.py): the
#              attention GPU tests; tools/attention_bench.py --mha (Triton against its forms, one layer); the best form
#              on Phi-2 128 x 1200 for the rest of the call; Phi-2 offline (1200/60, 1200/128) with it off, on, on, off
#              (FASTGEN_KERNELS_OFF=mha_decode), Llama-2-7B offline on, off; lines in s15.txt
#   s16        mha_decode's two forms and the decode grid's order (FASTGEN_DECODE_HEADS_FIRST): their GPU tests;
#              tools/attention_bench.py --mha (Triton and mha_decode, each grid order); Phi-2 offline with the heads
#              first off, on, on, off; lines in s16.txt
#   final9     issue 9's must-shows after session 12 (mha_decode and the heads-first decode grid on by default): the
#              offline workloads, Phi-2's 2048-token prompt steps, Phi-2 offline again with both off (session 11's
#              decode path), Phi-2 at 1 client, tools/attention_bench.py --mha, then the GPU tests in the time left
#              of ~580 s; lines in final9.txt
#   confirm12  session 12's last call, on the final commit: the new decode kernels' GPU tests, then Phi-2 offline
#              (1200/60, 1200/128) twice in two processes (the spread of its full-floor ratio); lines in confirm12.txt
#   online12   Phi-2 online (1200/60) at 8 and 32 clients, session 12's decode kernels on, then off
#              (FASTGEN_KERNELS_OFF=mha_decode FASTGEN_DECODE_HEADS_FIRST=0); lines in online12.txt
#   s14        the exact step as whole prompts through SDPA only (kernels kept): its GPU tests; every family's bf16
#              agreement with it, Mixtral's also with RMSNorm or rotary in torch; Mixtral-8x7B offline with it;
#              lines in s14.txt
#   final8     issue 9's must-shows after session 11 (fc1 + gelu_new in one GEMM; Mixtral's prompts through SDPA's
#              flash kernel): the offline workloads, Phi-2's 2048-token prompt steps, both again with
#              FASTGEN_KERNELS_OFF=gemm_gelu_new (Phi-2), Phi-2 at 1 client, the host's own time in the prompt steps
#              (cProfile), then the GPU tests in the time left of ~580 s; lines in final8.txt
#   ncu        Nsight Compute on single launches of the fused decode-attention kernel and the default path's
#              rotary_kv / split decode / merge (Phi-2, one sequence): the profile Speed V asks for; ncu.txt
#   speed2     per-token latency at 1 client (Phi-2, Llama-2-7B, Mixtral-8x7B) and Phi-2's online curve,
#              asynchronous scheduling on and off; host time per decode step at 128 sequences; then the
#              seed's other Phi-2 scenarios and Falcon-40B 1200/60 while time lasts
# Wheels the machine lacks (the server extras) travel in .whl/ (name it in the call's carry).
export PYTHONUNBUFFERED=1
STAGES=",${1:-tests},"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
has() { [[ "$STAGES" == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING
for p in plugins/*/; do python3 -m pip install -q --no-deps --no-build-isolation -e "$p" 2>&1 | grep -v WARNING; done
OLD="FASTGEN_KERNELS=reference FASTGEN_ATTENTION=sdpa"
# a stage's GPU tests (timeout, then pytest's arguments): the summary and failures into the stage's $S, the log kept
gpu_tests() {
  local limit=$1; shift
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider "$@" > /tmp/t.log 2>&1
  tail -1 /tmp/t.log | tee -a "$S"; grep -E "^FAILED|^ERROR" /tmp/t.log | cut -c1-200 | head -20 | tee -a "$S"
  cp /tmp/t.log "$OUT/gpu_tests.log"
}
# a run's result lines (bench, profile_steps), each prefixed with what ran, into the stage's $S
keep() { grep -E "^online|^fastgen|no synchronise|Error|passed|failed|^FAILED" | sed "s/^/$1 /" | tee -a "$S"; }
B="python3 -m fastgen_core.cli bench --output $OUT/bench.jsonl --peer none --max-ragged-batch-size 2048"
OL="$B --no-offline"
if has tests; then     # GPU_TESTS narrows the files (default: all of tests/gpu)
  timeout 300 python3 -m pytest -q -rs ${GPU_TESTS:-tests/gpu} -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if has agreement; then
  for mode in "" "FASTGEN_KERNELS=reference" "FASTGEN_ATTENTION=sdpa" "FASTGEN_KERNELS=reference FASTGEN_ATTENTION=sdpa"; do
    echo "== agreement with: ${mode:-defaults}" | tee -a "$OUT/agreement.txt"
    env $mode timeout 120 python3 -m pytest -q -s tests/gpu/test_agreement_gpu.py -k bf16 -p no:cacheprovider 2>&1 \
      | grep -oE "AGREEMENT [a-z0-9-]+ torch.bfloat16 \{'ours_vs_hf': [0-9.]+" | tee -a "$OUT/agreement.txt"
  done
fi
if has attention; then
  timeout 240 python3 tools/attention_bench.py --json "$OUT/attention.jsonl" 2>&1 | tail -16
fi
if has profile; then
  for mode in ${PROFILE_MODES:-new old}; do
    env $([ $mode = old ] && echo $OLD) timeout 200 python3 tools/profile_steps.py --preset phi-2 --budget 2048 \
      --requests 128 --json "$OUT/profile.jsonl" --tag $mode 2>&1 | tee -a "$OUT/profile.txt" | head -40
  done
fi
if has bench; then     # BENCH_OLD: presets also run on the old path (default: phi-2 llama-2-7b)
  for p in phi-2 llama-2-7b falcon-7b mixtral-8x7b; do
    n=64; g=60; [ $p = phi-2 ] && n=128 && g="60 128"
    for mode in new old; do
      [ $mode = old ] && [[ " ${BENCH_OLD:-phi-2 llama-2-7b} " != *" $p "* ]] && continue
      env $([ $mode = old ] && echo $OLD) timeout 200 $B --preset $p --num-requests $n --gen-mean $g --tag $mode 2>&1 \
        | grep -E "^fastgen" | sed "s/^/$p $mode /"
    done
  done
fi
if has online; then
  timeout 300 $B --preset phi-2 --num-requests 128 --gen-mean 60 --online 1,2,4,8,16,32 --warm-passes 0 \
    --tag online --plot "$OUT/phi2-online.png" 2>&1 | tail -8
fi
if has final; then
  timeout 85 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_attention_gpu.py tests/gpu/test_graphs_gpu.py \
    tests/gpu/test_kernels_gpu.py tests/gpu/test_engine_gpu.py -k "split or triton or async or gelu or transformers_on_cuda" \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -4
  for mode in async sync; do
    timeout 35 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 1,32 --tag $mode \
      --$([ $mode = sync ] && echo no-)async-scheduling 2>&1 | grep -E "^online" | sed "s/^/$mode /"
  done
fi
if has speed2; then
  timeout 100 $B --preset phi-2 --num-requests 128 --gen-mean 60 --online 1,8,32 --tag sync \
    --plot "$OUT/phi2-online.png" 2>&1 | grep -E "^fastgen|^online"
  timeout 60 $OL --preset phi-2 --num-requests 128 --gen-mean 60 --online 1,32 --async-scheduling --tag async \
    2>&1 | grep -E "^online"
  timeout 60 $OL --preset llama-2-7b --num-requests 16 --gen-mean 60 --online 1 --tag sync 2>&1 | grep -E "^online"
  timeout 80 $OL --preset mixtral-8x7b --num-requests 16 --gen-mean 60 --online 1 --tag sync 2>&1 | grep -E "^online"
  timeout 70 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 --equal-gen \
    --only-overlapped --json "$OUT/profile.jsonl" --tag decode-host 2>&1 | grep -E "no synchronise"
  timeout 90 $B --preset phi-2 --num-requests 64 --prompt-mean 1200 1900 --gen-mean 60 128 --online 1,8,32 \
    --no-offline --tag seed-scenarios --plot "$OUT/phi2-scenarios.png" 2>&1 | grep -E "^online"
  timeout 60 $OL --preset falcon-40b --num-requests 16 --gen-mean 60 --online 1,8 --tag sync 2>&1 | grep -E "^online"
fi
if has gemv; then
  timeout 150 python3 tools/gemv_bench.py --json "$OUT/gemv.jsonl" 2>&1 | tail -32
fi
if has smalldecode; then
  timeout 150 python3 tools/attention_bench.py --small-decode-only --json "$OUT/small_decode.jsonl" 2>&1 | tail -9
fi
if has batch1; then     # per-token latency at 1 client, the decode kernels of this work on and off
  for off in "" "gemv,add3_layer_norm"; do
    for p in ${BATCH1_PRESETS:-phi-2 llama-2-7b}; do
      FASTGEN_KERNELS_OFF=$off timeout 80 $OL --preset $p --num-requests 16 --gen-mean 60 --online 1 \
        --tag "batch1${off:+-off}" 2>&1 | grep -E "^online" | sed "s/^/$p ${off:+off:$off} /"
    done
  done
  timeout 90 python3 tools/profile_steps.py --preset phi-2 --requests 1 --prompt 1200 --gen 128 --equal-gen \
    --top 24 --json "$OUT/profile.jsonl" --tag batch1 > /tmp/p1.txt 2>&1
  cat /tmp/p1.txt >> "$OUT/profile.txt"; grep -E "no synchronise|^decode|^prefill" /tmp/p1.txt; tail -25 /tmp/p1.txt
fi
if has hostprof; then   # the host's own time in prompt-carrying steps (cProfile, steps synchronised)
  timeout 100 python3 tools/profile_steps.py --preset phi-2 --requests 32 --prompt 1200 --gen 2 --equal-gen \
    --cprofile --top 30 --tag prefill-host 2>&1 | tee "$OUT/hostprof.txt" | tail -44
fi
if has hostdiag; then
  for n in ${HOST_SEQS:-128 32}; do
    for loop in sync async; do
      timeout 70 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests $n --equal-gen --only-overlapped \
        --$([ $loop = sync ] && echo no-)async-scheduling --json "$OUT/profile.jsonl" --tag "host-$n-$loop" 2>&1 \
        > /tmp/h.txt 2>&1; cat /tmp/h.txt >> "$OUT/hostdiag.txt"; grep -E "no synchronise" /tmp/h.txt || tail -5 /tmp/h.txt
    done
  done
fi
if has final2; then    # session 5's closing run: its kernels' GPU tests (a kernel whose tests fail is switched off for
  # the benches, and the log says so), then per-token latency, decode host time and Phi-2 offline, most wanted first
  off=""
  T="timeout 120 python3 -m pytest -q -p no:cacheprovider"
  S="$OUT/final2.txt"
  $T tests/gpu/test_gemv_gpu.py -k "not expert" > /tmp/t1.log 2>&1; tail -1 /tmp/t1.log | tee -a "$S"
  grep -q " failed" /tmp/t1.log && off="gemv"
  $T tests/gpu/test_gemv_gpu.py -k "expert" > /tmp/t2.log 2>&1; tail -1 /tmp/t2.log | tee -a "$S"
  grep -q " failed" /tmp/t2.log && off="$off,expert_gemv"
  $T tests/gpu/test_kernels_gpu.py -k "add3 or captured or fp32_greedy" > /tmp/t3.log 2>&1; tail -1 /tmp/t3.log | tee -a "$S"
  grep -q "FAILED.*add3" /tmp/t3.log && off="$off,add3_layer_norm"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_graphs_gpu.py \
    tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda > /tmp/t4.log 2>&1; tail -1 /tmp/t4.log | tee -a "$S"
  cat /tmp/t1.log /tmp/t2.log /tmp/t3.log /tmp/t4.log > "$OUT/gpu_tests.log"
  export FASTGEN_KERNELS_OFF="${off#,}"; echo "kernels switched off for the benches: '${FASTGEN_KERNELS_OFF}'" | tee -a "$S"
  on() { grep -E "^online|^fastgen|no synchronise" | sed "s/^/$1 /" | tee -a "$S"; }
  timeout 70 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 1,32 --tag final 2>&1 | on "phi-2 sync"
  timeout 50 $OL --preset llama-2-7b --num-requests 16 --gen-mean 60 --online 1 --tag final 2>&1 | on llama-2-7b
  timeout 100 $OL --preset mixtral-8x7b --num-requests 16 --gen-mean 60 --online 1 --tag final 2>&1 | on mixtral-8x7b
  for loop in sync async; do
    timeout 70 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 --equal-gen --only-overlapped \
      --$([ $loop = sync ] && echo no-)async-scheduling --json "$OUT/profile.jsonl" --tag "host-128-$loop" \
      > /tmp/h.txt 2>&1; cat /tmp/h.txt >> "$OUT/hostdiag.txt"; on "host-128-$loop" < /tmp/h.txt
  done
  FASTGEN_KERNELS_OFF="${FASTGEN_KERNELS_OFF:+$FASTGEN_KERNELS_OFF,}expert_gemv" timeout 100 $OL --preset mixtral-8x7b \
    --num-requests 16 --gen-mean 60 --online 1 --tag final-off-expert_gemv 2>&1 | on "mixtral-8x7b off:expert_gemv"
  timeout 60 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 1,32 --async-scheduling --tag final-async \
    2>&1 | on "phi-2 async"
  timeout 80 $B --preset phi-2 --num-requests 128 --gen-mean 60 128 --tag final 2>&1 | on "phi-2 offline"
fi
if has loops; then     # the async-default question: Phi-2 at 1 and 32 clients, sync and async alternated, 3 rounds each
  for round in 1 2 3; do
    for loop in sync async; do
      timeout 60 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 1,32 --tag "loops-$loop-$round" \
        --$([ $loop = sync ] && echo no-)async-scheduling 2>&1 | grep -E "^online" | sed "s/^/$loop round $round /"
    done
  done
fi
if has syncs; then
  for loop in async sync; do
    timeout 90 python3 tools/profile_steps.py --preset phi-2 --requests 32 --prompt 1200 --gen 16 --equal-gen \
      --sync-sites --top 20 --tag "syncs-$loop" --$([ $loop = sync ] && echo no-)async-scheduling 2>&1 \
      | tee -a "$OUT/syncs.txt" | tail -22
  done
fi
if has s6; then
  S="$OUT/s6.txt"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gemv_gpu.py tests/gpu/test_kernels_gpu.py \
    tests/gpu/test_graphs_gpu.py tests/gpu/test_engine_gpu.py > /tmp/t.log 2>&1
  tail -1 /tmp/t.log | tee -a "$S"; grep -E "^FAILED|^ERROR" /tmp/t.log | head -20 | tee -a "$S"; cp /tmp/t.log "$OUT/gpu_tests.log"
  timeout 150 python3 tools/gemv_bench.py --rows 1 --json "$OUT/gemv.jsonl" 2>&1 | tee -a "$S" | tail -10
  for round in 1 2; do
    for off in "" gemv_gelu_new; do
      FASTGEN_KERNELS_OFF=$off timeout 60 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
        --tag "b1${off:+-off-$off}-$round" 2>&1 | grep -E "^online" | sed "s/^/phi-2 round $round off:${off:-none} /" | tee -a "$S"
    done
  done
  for loop in async sync; do
    timeout 100 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 --equal-gen --only-overlapped \
      --$([ $loop = sync ] && echo no-)async-scheduling --json "$OUT/profile.jsonl" --tag "host-128-$loop" 2>&1 \
      | grep -E "no synchronise|Error" | tee -a "$S"
  done
fi
if has final3; then
  S="$OUT/final3.txt"
  timeout 130 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gemv_gpu.py \
    tests/gpu/test_graphs_gpu.py tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda \
    tests/gpu/test_agreement_gpu.py -k "default or phi or graph or takes or bf16 or fp32 or transformers or async" \
    > /tmp/t.log 2>&1; tail -1 /tmp/t.log | tee -a "$S"; grep -E "^FAILED|^ERROR|AGREEMENT" /tmp/t.log | cut -c1-150 | tee -a "$S"
  cp /tmp/t.log "$OUT/gpu_tests.log"
  f3() { grep -E "^online|Error" | sed "s/^/$1 /" | tee -a "$S"; }
  for off in "" gemv_ksplit; do
    FASTGEN_KERNELS_OFF=$off timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
      --tag "final3${off:+-off-$off}" 2>&1 | f3 "phi-2 off:${off:-none}"
  done
  timeout 60 $OL --preset llama-2-7b --num-requests 16 --gen-mean 60 --online 1 --tag final3 2>&1 | f3 llama-2-7b
  timeout 45 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 32 --tag final3 2>&1 | f3 "phi-2"
  SEED_RUNS=${SEED_RUNS:-phi2,falcon40b,mix-short}; STAGES="$STAGES,seed,"
fi
if has final5; then
  S="$OUT/final5.txt"
  timeout 60 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 1,32 --tag final5 2>&1 | keep phi-2
  timeout 50 $OL --preset llama-2-7b --num-requests 8 --gen-mean 60 --online 1 --tag final5 2>&1 | keep llama-2-7b
  timeout 65 $OL --preset mixtral-8x7b --num-requests 8 --prompt-mean 500 --gen-mean 150 --online 1 --tag final5 \
    2>&1 | keep mixtral-8x7b
  timeout 65 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 --equal-gen --only-overlapped \
    --json "$OUT/profile.jsonl" --tag host-128-async > /tmp/h.txt 2>&1; cat /tmp/h.txt >> "$OUT/hostdiag.txt"
  keep host-128-async < /tmp/h.txt
  gpu_tests 80 tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda tests/gpu/test_graphs_gpu.py \
    -k "transformers or async or two_streams"
fi
if has s8c; then
  S="$OUT/s8c.txt"
  timeout 60 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 32,32 --tag s8c 2>&1 | keep "phi-2"
  timeout 70 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 --equal-gen --only-overlapped \
    --json "$OUT/profile.jsonl" --tag host-128-async > /tmp/h.txt 2>&1; cat /tmp/h.txt >> "$OUT/hostdiag.txt"
  keep host-128-async < /tmp/h.txt
  SEED_RUNS=mix-1200,mix-1024; STAGES="$STAGES,seed,"
fi
if has seed; then      # the seed's scenarios, cheapest first; each command's timeout bounds it
  S="$OUT/seed.txt"
  sd() { grep -E "^online|Error" | sed "s/^/$1 /" | tee -a "$S"; }
  OL="$OL --num-requests 16"      # (the warm-up pass's size; the online runs take max(8, 2C) requests)
  R=",${SEED_RUNS:-phi2,falcon40b,mix-short,mix-1200,mix-1024},"
  [[ $R == *,phi2,* ]] && timeout 170 $OL --preset phi-2 --prompt-mean 1200 1900 --gen-mean 60 128 --online 1,8,32,64 \
    --tag seed 2>&1 | sd phi-2
  [[ $R == *,falcon40b,* ]] && timeout 180 $OL --preset falcon-40b --gen-mean 60 --online 1,8,32,64 --tag seed 2>&1 | sd falcon-40b
  [[ $R == *,mix-short,* ]] && timeout 220 $OL --preset mixtral-8x7b --prompt-mean 500 --gen-mean 150 500 --online 1,16,64 \
    --tag seed 2>&1 | sd mixtral-8x7b
  [[ $R == *,mix-1200,* ]] && timeout 150 $OL --preset mixtral-8x7b --gen-mean 60 128 --online 1,16,64 --tag seed 2>&1 | sd mixtral-8x7b
  [[ $R == *,mix-1024,* ]] && timeout 270 $OL --preset mixtral-8x7b --prompt-mean 500 --gen-mean 1024 --online 16,64 \
    --tag seed 2>&1 | sd mixtral-8x7b
fi
if has s7; then         # session 7: the fused decode-attention kernel (rotary + KV write + split attention + merge)
  S="$OUT/s7.txt"
  gpu_tests 150 tests/gpu/test_decode_attention_gpu.py tests/gpu/test_graphs_gpu.py tests/gpu/test_kernels_gpu.py \
    tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda -k "not gemv"
  timeout 60 python3 tools/attention_bench.py --small-decode-only --no-tiles --json "$OUT/small_decode.jsonl" 2>&1 \
    | grep -vi warn | tail -16 | tee -a "$S"
  for on in decode_attention "" decode_attention; do      # opt-in since session 7 (it did not win)
    FASTGEN_KERNELS_ON=$on timeout 50 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
      --tag "s7${on:+-on-$on}" 2>&1 | keep "phi-2 on:${on:-none}"
  done
  timeout 60 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 8,32 --tag s7-aligned 2>&1 | keep "phi-2"
  export FASTGEN_KERNELS_ON=decode_attention
  timeout 60 $OL --preset llama-2-7b --num-requests 16 --gen-mean 60 --online 1 --tag s7 2>&1 | keep "llama-2-7b"
  timeout 70 $OL --preset mixtral-8x7b --num-requests 16 --prompt-mean 500 --gen-mean 150 --online 1 --tag s7 \
    2>&1 | keep mixtral-8x7b
  unset FASTGEN_KERNELS_ON
fi
if has s7b; then        # session 7's second kernel version: tests, Phi-2 at 1 client on/off/on, the layer bench, Llama, Mixtral
  S="$OUT/s7b.txt"
  gpu_tests 110 tests/gpu/test_decode_attention_gpu.py tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda \
    tests/gpu/test_graphs_gpu.py tests/gpu/test_kernels_gpu.py -k "decode or fp32 or async"
  for on in decode_attention "" decode_attention; do      # opt-in since session 7 (it did not win)
    FASTGEN_KERNELS_ON=$on timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
      --tag "s7b${on:+-on-$on}" 2>&1 | keep "phi-2 on:${on:-none}"
  done
  timeout 45 python3 tools/attention_bench.py --small-decode-only --no-tiles --json "$OUT/small_decode.jsonl" 2>&1 \
    | grep -vi warn | tail -16 | tee -a "$S"
  export FASTGEN_KERNELS_ON=decode_attention
  timeout 50 $OL --preset llama-2-7b --num-requests 16 --gen-mean 60 --online 1 --tag s7b 2>&1 | keep "llama-2-7b"
  timeout 60 $OL --preset mixtral-8x7b --num-requests 16 --prompt-mean 500 --gen-mean 150 --online 1 --tag s7b \
    2>&1 | keep mixtral-8x7b
  unset FASTGEN_KERNELS_ON
fi
if has final4; then
  S="$OUT/final4.txt"
  gpu_tests 120 tests/gpu/test_graphs_gpu.py tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda
  for off in "" branch_streams ""; do
    FASTGEN_KERNELS_OFF=$off timeout 40 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
      --tag "final4${off:+-off-$off}" 2>&1 | keep "phi-2 off:${off:-none}"
  done
  timeout 60 $OL --preset llama-2-7b --num-requests 16 --gen-mean 60 --online 1 --tag final4 2>&1 | keep llama-2-7b
  timeout 70 $OL --preset mixtral-8x7b --num-requests 16 --prompt-mean 500 --gen-mean 150 --online 1 --tag final4 \
    2>&1 | keep mixtral-8x7b
  timeout 50 $OL --preset phi-2 --num-requests 64 --gen-mean 60 --online 32 --tag final4 2>&1 | keep "phi-2"
  timeout 70 python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 --equal-gen --only-overlapped \
    --json "$OUT/profile.jsonl" --tag host-128-async > /tmp/h.txt 2>&1; cat /tmp/h.txt >> "$OUT/hostdiag.txt"
  keep host-128-async < /tmp/h.txt
fi
if has s8; then         # session 8: parallel layers' MLP on a second stream (FASTGEN_KERNELS_OFF=branch_streams: one)
  S="$OUT/s8.txt"
  gpu_tests 150 tests/gpu/test_graphs_gpu.py tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda
  for off in branch_streams "" branch_streams ""; do
    FASTGEN_KERNELS_OFF=$off timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
      --tag "s8${off:+-off-$off}" 2>&1 | keep "phi-2 off:${off:-none}"
  done
  for off in branch_streams ""; do
    FASTGEN_KERNELS_OFF=$off timeout 50 $OL --preset falcon-7b --num-requests 16 --gen-mean 60 --online 1 \
      --tag "s8${off:+-off-$off}" 2>&1 | keep "falcon-7b off:${off:-none}"
  done
  for off in "" branch_streams; do
    FASTGEN_KERNELS_OFF=$off timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 32 \
      --tag "s8${off:+-off-$off}" 2>&1 | keep "phi-2 off:${off:-none}"
  done
  for cap in 0 256 4096; do
    FASTGEN_BRANCH_MAX_TOKENS=$cap timeout 60 $B --preset phi-2 --num-requests 128 --gen-mean 60 --tag "s8-cap$cap" \
      2>&1 | keep "phi-2 offline cap:$cap"
  done
  timeout 60 python3 tools/profile_steps.py --preset phi-2 --requests 1 --prompt 1200 --gen 128 --equal-gen \
    --top 24 --json "$OUT/profile.jsonl" --tag batch1-s8 > /tmp/p1.txt 2>&1
  cat /tmp/p1.txt >> "$OUT/profile.txt"; grep -E "no synchronise|^decode|^prefill" /tmp/p1.txt | tee -a "$S"; tail -25 /tmp/p1.txt
fi
if has s9; then         # session 9: issue 9's workloads re-measured, the 2048-token prompt step, Mixtral agreement
  S="$OUT/s9.txt"
  for p in ${S9_PRESETS:-phi-2 llama-2-7b falcon-7b mixtral-8x7b}; do
    n=64; g=60; [ $p = phi-2 ] && n=128 && g="60 128"
    timeout 150 $B --preset $p --num-requests $n --gen-mean $g --tag s9 2>&1 | keep "$p offline"
  done
  prof() {  # tag, then profile_steps' arguments: the step table into $S, the whole printout kept
    local tag=$1; shift
    timeout 100 python3 tools/profile_steps.py --budget 2048 --json "$OUT/profile.jsonl" --tag "$tag" --top 20 "$@" \
      > /tmp/p.txt 2>&1; cat /tmp/p.txt >> "$OUT/profile.txt"
    grep -E "steps of|^step|^prefill|^decode|Error" /tmp/p.txt | sed "s/^/$tag /" | tee -a "$S"
  }
  prof prompt2048 --preset phi-2 --requests 32 --prompt 1200 --gen 1 --equal-gen
  timeout 90 python3 tools/moe_agreement_probe.py 2>&1 | grep -E "MOEPROBE|Error" | tee -a "$S"
  gpu_tests 60 tests/gpu/test_graphs_gpu.py -k async
  prof mixtral-offline --preset mixtral-8x7b --requests 64 --prompt 1200 --gen 60
  prof falcon-offline --preset falcon-7b --requests 64 --prompt 1200 --gen 60
fi
if has s9b; then        # session 9: the vector/paired kernels and the MoE combine, on (default) and off (S9_OFF)
  S="$OUT/s9b.txt"
  OFF=${S9_OFF:-rotary_kv_vec,gelu_new_paired,add3_layer_norm_vec,rms_norm_vec,silu_and_mul_vec,moe_combine}
  gpu_tests 120 tests/gpu/test_kernels_gpu.py -k "rotary or gelu or add3 or rms or silu or moe_combine"
  cp "$OUT/gpu_tests.log" "$OUT/gpu_tests_kernels.log"
  prof() {
    local tag=$1; shift
    timeout 100 python3 tools/profile_steps.py --budget 2048 --json "$OUT/profile.jsonl" --tag "$tag" --top 20 "$@" \
      > /tmp/p.txt 2>&1; cat /tmp/p.txt >> "$OUT/profile.txt"
    grep -E "steps of|^step|^prefill|^decode|Error" /tmp/p.txt | sed "s/^/$tag /" | tee -a "$S"
    grep -oE "head_busy_ms_per_step[^,]*|head_host_exposed_ms_per_step_unprofiled[^,]*" /tmp/p.txt | sed "s/^/$tag /" | tee -a "$S"
  }
  for off in "" $OFF; do
    FASTGEN_KERNELS_OFF=$off prof "prompt2048${off:+-off}" --preset phi-2 --requests 32 --prompt 1200 --gen 1 --equal-gen
  done
  for off in $OFF ""; do
    FASTGEN_KERNELS_OFF=$off timeout 110 $B --preset mixtral-8x7b --num-requests 64 --gen-mean 60 --tag "s9b${off:+-off}" \
      2>&1 | keep "mixtral-8x7b offline ${off:+off}"
  done
  timeout 100 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_agreement_gpu.py -k bf16 > /tmp/a.log 2>&1
  tail -1 /tmp/a.log | tee -a "$S"; grep -oE "AGREEMENT [a-z0-9-]+ torch.bfloat16 \{'ours_vs_hf': [0-9.]+" /tmp/a.log | tee -a "$S"
  cp /tmp/a.log "$OUT/agreement.log"
  for off in $OFF ""; do
    FASTGEN_KERNELS_OFF=$off timeout 70 $B --preset phi-2 --num-requests 128 --gen-mean 60 128 --tag "s9b${off:+-off}" \
      2>&1 | keep "phi-2 offline ${off:+off}"
  done
  for off in "" $OFF; do
    FASTGEN_KERNELS_OFF=$off timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 \
      --tag "s9b${off:+-off}" 2>&1 | keep "phi-2 ${off:+off}"
  done
  gpu_tests 80 tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda tests/gpu/test_graphs_gpu.py \
    -k "transformers or two_streams or mixtral"
fi
if has rerun9; then     # how far the final call's borderline ratios move between runs (Phi-2 1200/128: 71.0% then 68.6%)
  S="$OUT/rerun9.txt"
  for p in phi-2 phi-2 mixtral-8x7b; do
    n=64; g=60; [ $p = phi-2 ] && n=128 && g="60 128"
    timeout 120 $B --preset $p --num-requests $n --gen-mean $g --tag rerun9 2>&1 | keep "$p offline"
  done
fi
if has s10; then        # the Triton MoE GEMMs against grouped_mm, most wanted first (a cut loses the tail)
  S="$OUT/s10.txt"
  gpu_tests 150 tests/gpu/test_moe_triton_gpu.py tests/gpu/test_kernels_gpu.py -k "moe or silu"
  timeout 120 python3 tools/moe_bench.py --json "$OUT/moe_bench.jsonl" 2>&1 | tee -a "$S" | cut -c1-400
  for off in moe_triton "" moe_triton ""; do
    FASTGEN_KERNELS_OFF=$off timeout 110 $B --preset mixtral-8x7b --num-requests 64 --gen-mean 60 \
      --tag "s10${off:+-off}" 2>&1 | keep "mixtral-8x7b offline ${off:+off}"
  done
  for off in moe_triton ""; do
    FASTGEN_KERNELS_OFF=$off timeout 70 $OL --preset mixtral-8x7b --num-requests 16 --prompt-mean 500 --gen-mean 150 \
      --online 1,16 --tag "s10${off:+-off}" 2>&1 | keep "mixtral-8x7b ${off:+off}"
  done
fi
# issue 9's offline workloads (Phi-2 1200/60 and 1200/128, Llama-2-7B, Falcon-7B, Mixtral-8x7B), tagged $1
must_show_offline() {
  for p in phi-2 llama-2-7b falcon-7b mixtral-8x7b; do
    n=64; g=60; [ $p = phi-2 ] && n=128 && g="60 128"
    timeout 150 $B --preset $p --num-requests $n --gen-mean $g --tag $1 2>&1 | keep "$p offline"
  done
}
for stage in final6 final7; do   # issue 9's must-shows, all in one call (the ceilings the same for every line)
  has $stage || continue
  S="$OUT/$stage.txt"
  export FASTGEN_KERNELS_ON=${FINAL7_ON:-}
  echo "FASTGEN_KERNELS_ON=${FASTGEN_KERNELS_ON}" | tee -a "$S"
  must_show_offline $stage
  timeout 100 python3 tools/profile_steps.py --budget 2048 --json "$OUT/profile.jsonl" --tag prompt2048 --top 20 \
    --preset phi-2 --requests 32 --prompt 1200 --gen 1 --equal-gen > /tmp/p.txt 2>&1; cat /tmp/p.txt >> "$OUT/profile.txt"
  grep -E "^step|^prefill|Error" /tmp/p.txt | sed "s/^/prompt2048 /" | tee -a "$S"
  grep -oE "head_busy_ms_per_step[^,]*|head_host_exposed_ms_per_step_unprofiled[^,]*" /tmp/p.txt | sed "s/^/prompt2048 /" | tee -a "$S"
  timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 --tag $stage 2>&1 | keep "phi-2"
  gpu_tests ${FINAL7_TEST_S:-240} tests/gpu/test_kernels_gpu.py tests/gpu/test_agreement_gpu.py \
    tests/gpu/test_moe_triton_gpu.py tests/gpu/test_attention_gpu.py \
    tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda tests/gpu/test_graphs_gpu.py -s
  grep -oE "AGREEMENT [a-z0-9-]+ torch.[a-z0-9]+ \{'ours_vs_hf': [0-9.]+" "$OUT/gpu_tests.log" | tee -a "$S"
  timeout 70 $OL --preset mixtral-8x7b --num-requests 16 --prompt-mean 500 --gen-mean 150 --online 1,16 --tag $stage \
    2>&1 | keep "mixtral-8x7b"
done
if has s13; then
  S="$OUT/s13.txt"
  gpu_tests 150 tests/gpu/test_gemv_gpu.py tests/gpu/test_kernels_gpu.py -k gelu
  timeout 60 python3 tools/gelu_bench.py --json "$OUT/gelu.jsonl" 2>&1 | cut -c1-700 | tee -a "$S"
  timeout 90 python3 -m pytest -q -s tests/gpu/test_agreement_gpu.py -k "phi" -p no:cacheprovider 2>&1 \
    | grep -oE "AGREEMENT [a-z0-9-]+ torch.[a-z0-9]+ \{'ours_vs_hf': [0-9.]+, 'ours_vs_hf_fp32': [0-9.]+" | tee -a "$S"
  timeout 100 python3 tools/profile_steps.py --budget 2048 --json "$OUT/profile.jsonl" --tag s13 --top 12 \
    --preset phi-2 --requests 32 --prompt 1200 --gen 1 --equal-gen > /tmp/p.txt 2>&1
  cat /tmp/p.txt >> "$OUT/profile.txt"
  grep -E "^prefill|Error" /tmp/p.txt | sed "s/^/prompt2048 /" | tee -a "$S"
  grep -oE "head_busy_ms_per_step[^,]*|head_host_exposed_ms_per_step_unprofiled[^,]*" /tmp/p.txt \
    | sed "s/^/prompt2048 /" | tee -a "$S"
  for mode in "FASTGEN_KERNELS_OFF=gemm_gelu_new" ""; do
    env $mode timeout 100 $B --preset phi-2 --num-requests 128 --gen-mean 60 128 --tag "s13 $mode" 2>&1 \
      | keep "phi-2 offline ${mode:-default}"
  done
fi
if has s14; then
  S="$OUT/s14.txt"
  gpu_tests 90 tests/gpu/test_attention_gpu.py -k exact
  # the exact step now only sends whole prompts through SDPA's flash kernel (K/V read back from the cache); with
  # RMSNorm or rotary in torch too (a global switch: the agreement test's forwards are all prompt)
  for mode in "FASTGEN_KERNELS_ON=exact_prefill" "FASTGEN_KERNELS_ON=exact_prefill FASTGEN_KERNELS_OFF=rms_norm" \
              "FASTGEN_KERNELS_ON=exact_prefill FASTGEN_KERNELS_OFF=rotary_kv"; do
    echo "== agreement with: $mode" | tee -a "$S"
    k=bf16; [ "$mode" != "FASTGEN_KERNELS_ON=exact_prefill" ] && k="mixtral and bf16"
    env $mode timeout 120 python3 -m pytest -q -s tests/gpu/test_agreement_gpu.py -k "$k" -p no:cacheprovider 2>&1 \
      | grep -oE "AGREEMENT [a-z0-9-]+ torch.bfloat16 \{'ours_vs_hf': [0-9.]+|passed|failed" | tee -a "$S"
  done
  FASTGEN_KERNELS_ON=exact_prefill timeout 110 $B --preset mixtral-8x7b --num-requests 64 --gen-mean 60 \
    --tag "s14 exact_prefill" 2>&1 | keep "mixtral-8x7b offline exact_prefill"
fi
# Phi-2's 2048-token prompt steps (every request one token): the kernel table and the asynchronous pass's busy and
# exposed host time per step, lines prefixed with $1, into $S; the environment of the call applies (env before it)
prompt2048() {
  timeout 100 python3 tools/profile_steps.py --budget 2048 --json "$OUT/profile.jsonl" --tag "prompt2048 $1" --top 20 \
    --preset phi-2 --requests 32 --prompt 1200 --gen 1 --equal-gen > /tmp/p.txt 2>&1; cat /tmp/p.txt >> "$OUT/profile.txt"
  grep -E "^prefill|Error" /tmp/p.txt | sed "s/^/prompt2048 $1 /" | tee -a "$S"
  grep -oE "head_busy_ms_per_step[^,]*|head_host_exposed_ms_per_step_unprofiled[^,]*" /tmp/p.txt \
    | sed "s/^/prompt2048 $1 /" | tee -a "$S"
}
if has final8; then
  S="$OUT/final8.txt"
  must_show_offline final8
  prompt2048 default
  FASTGEN_KERNELS_OFF=gemm_gelu_new prompt2048 gemm_gelu_new-off
  FASTGEN_KERNELS_OFF=gemm_gelu_new timeout 100 $B --preset phi-2 --num-requests 128 --gen-mean 60 128 \
    --tag "final8 gemm_gelu_new-off" 2>&1 | keep "phi-2 offline gemm_gelu_new-off"
  timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 --tag final8 2>&1 | keep "phi-2"
  timeout 60 python3 tools/profile_steps.py --preset phi-2 --requests 32 --prompt 1200 --gen 1 --equal-gen \
    --cprofile --top 25 --tag prompt-host > "$OUT/hostprof.txt" 2>&1
  left=$((580 - SECONDS)); echo "GPU tests with ${left} s left" | tee -a "$S"
  [ $left -gt 30 ] && gpu_tests $left tests/gpu/test_agreement_gpu.py tests/gpu/test_kernels_gpu.py \
    tests/gpu/test_moe_triton_gpu.py tests/gpu/test_attention_gpu.py \
    tests/gpu/test_gemv_gpu.py::test_gemm_gelu_new_is_the_tanh_gelu_of_fc1_in_one_kernel \
    tests/gpu/test_gemv_gpu.py::test_phi_mlp_takes_its_fused_fc1_gelu_new_in_a_graph_and_matches_the_unfused_path \
    tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda tests/gpu/test_graphs_gpu.py -s
  grep -oE "AGREEMENT [a-z0-9-]+ torch.[a-z0-9]+ \{'ours_vs_hf': [0-9.]+" "$OUT/gpu_tests.log" | tee -a "$S"
fi
if has s15; then
  S="$OUT/s15.txt"
  gpu_tests 150 tests/gpu/test_attention_gpu.py
  if grep -qE "^FAILED.*mha|^ERROR" /tmp/t.log; then echo "mha_decode failed its tests: no offline runs" | tee -a "$S"; else
    timeout 90 python3 tools/attention_bench.py --mha --json "$OUT/attention.jsonl" 2>&1 | tail -8 | tee -a "$S"
    form=$(python3 -c "
import json
r = [json.loads(l) for l in open('$OUT/attention.jsonl') if 'phi-2 128 x 1200' in l][-1]
print(min((v[0], k) for k, v in r.items() if k.startswith('mha('))[1][4:-1].replace(' ', ''))")
    echo "form for the offline runs: $form" | tee -a "$S"
    export FASTGEN_MHA_DECODE_FORM=$form
    for mode in off on on off; do
      env $([ $mode = off ] && echo FASTGEN_KERNELS_OFF=mha_decode) timeout 120 $B --preset phi-2 --num-requests 128 \
        --gen-mean 60 128 --tag "s15 mha_decode-$mode" 2>&1 | keep "phi-2 offline mha_decode-$mode"
    done
    for mode in on off; do
      env $([ $mode = off ] && echo FASTGEN_KERNELS_OFF=mha_decode) timeout 100 $B --preset llama-2-7b --num-requests 64 \
        --gen-mean 60 --tag "s15 mha_decode-$mode" 2>&1 | keep "llama-2-7b offline mha_decode-$mode"
    done
  fi
fi
if has s16; then
  S="$OUT/s16.txt"
  gpu_tests 120 tests/gpu/test_attention_gpu.py -k "mha or many_decodes or grid_orders or split_decode_is_chosen"
  timeout 120 python3 tools/attention_bench.py --mha --json "$OUT/attention.jsonl" 2>&1 | grep decode | tee -a "$S"
  for hf in 0 1 1 0; do
    FASTGEN_DECODE_HEADS_FIRST=$hf timeout 120 $B --preset phi-2 --num-requests 128 --gen-mean 60 128 \
      --tag "s16 heads_first=$hf" 2>&1 | keep "phi-2 offline heads_first=$hf"
  done
fi
if has final9; then
  S="$OUT/final9.txt"
  must_show_offline final9
  prompt2048 default
  FASTGEN_KERNELS_OFF=mha_decode FASTGEN_DECODE_HEADS_FIRST=0 timeout 100 $B --preset phi-2 --num-requests 128 \
    --gen-mean 60 128 --tag "final9 session-11 decode" 2>&1 | keep "phi-2 offline session-11-decode"
  timeout 45 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 1 --tag final9 2>&1 | keep "phi-2"
  timeout 90 python3 tools/attention_bench.py --mha --json "$OUT/attention.jsonl" 2>&1 | grep decode | tee -a "$S"
  left=$((575 - SECONDS)); echo "GPU tests with ${left} s left" | tee -a "$S"
  [ $left -gt 30 ] && gpu_tests $left tests/gpu/test_attention_gpu.py tests/gpu/test_agreement_gpu.py \
    tests/gpu/test_kernels_gpu.py tests/gpu/test_moe_triton_gpu.py tests/gpu/test_graphs_gpu.py \
    tests/gpu/test_engine_gpu.py::test_fp32_greedy_matches_transformers_on_cuda \
    tests/gpu/test_gemv_gpu.py::test_gemm_gelu_new_is_the_tanh_gelu_of_fc1_in_one_kernel -s
  grep -oE "AGREEMENT [a-z0-9-]+ torch.[a-z0-9]+ \{'ours_vs_hf': [0-9.]+" "$OUT/gpu_tests.log" | tee -a "$S"
fi
if has confirm12; then
  S="$OUT/confirm12.txt"
  gpu_tests 100 tests/gpu/test_attention_gpu.py -k "mha or many_decodes or grid_orders or split_decode_is_chosen"
  for r in 1 2; do
    timeout 100 $B --preset phi-2 --num-requests 128 --gen-mean 60 128 --tag "confirm12 run $r" 2>&1 \
      | keep "phi-2 offline run $r"
  done
fi
if has online12; then
  S="$OUT/online12.txt"
  timeout 100 $OL --preset phi-2 --num-requests 16 --gen-mean 60 --online 8,32 --tag "online12 on" 2>&1 | keep "phi-2 on"
  FASTGEN_KERNELS_OFF=mha_decode FASTGEN_DECODE_HEADS_FIRST=0 timeout 100 $OL --preset phi-2 --num-requests 16 \
    --gen-mean 60 --online 8,32 --tag "online12 off" 2>&1 | keep "phi-2 off"
fi
if has ncu; then        # Nsight Compute on one launch each of the fused decode-attention kernel and the default path's
  # kernels (Phi-2, one sequence of 1200): where the ~12-15 us of a layer go (memory, latency, stalls); works on the
  # Firecracker machines only (KINDS.md), clocks left alone (METHOD.md)
  timeout 240 ncu --clock-control none --set full --launch-count 6 \
    -k "regex:decode_attention|_paged_decode|_merge|rotary_kv" \
    python3 tools/attention_bench.py --small-decode-only --no-tiles > "$OUT/ncu.txt" 2>&1
  grep -E "decode_attention|_paged_decode|_merge|rotary_kv|Duration|Memory Throughput|Achieved Occupancy|Registers" \
    "$OUT/ncu.txt" | head -60
fi
if has load; then
  timeout 300 python3 tools/load_time.py --preset llama-2-7b --json "$OUT/load.jsonl" 2>&1 | tail -6
fi
