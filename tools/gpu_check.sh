#!/bin/bash
# The GPU suite, on a machine with an NVIDIA GPU: the GPU tests, the offline benchmarks docs/performance.md cites,
# Phi-2's per-token latency at 1 and 32 clients, and a profile of one prompt step. `make gpu-check` runs it.
#
#   bash tools/gpu_check.sh [OUT_DIR]          (default ./gpu-check-out)
#
# Assumes the project, its plugins and the test extras are installed (`make install-test`) in the Python that
# $PYTHON names, else the active virtualenv's, else .venv/bin/python, else python3. GPU_CHECK_STAGES picks stages
# (default: tests,offline,online,profile). Writes into OUT_DIR:
#   env.txt                    the card and the versions
#   gpu-tests.log              python -m pytest tests/gpu (with every family's AGREEMENT line)
#   bench.jsonl, bench.log     fastgen bench's records (the fields of docs/bench-results/*.jsonl) and its output
#   profile-phi2-prefill.txt   where Phi-2's 2048-token prompt steps go (tools/profile_steps.py; numbers in
#                              profile.jsonl)
# Mixtral-8x7B (93 GB of weights in bf16) runs only on a card of more than 110 GiB.
#   summary.txt                the test summary and each benchmark's result lines
# Every stage runs even when one before it failed; the exit status is 1 when any did.
set -u
OUT=${1:-./gpu-check-out}
STAGES=",${GPU_CHECK_STAGES:-tests,offline,online,profile},"
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON=python
  elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
  else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
failed=0
has() { [[ "$STAGES" == *",$1,"* ]]; }
step() { echo "== $*" | tee -a "$SUMMARY"; }
# run a command, keep its whole output in $1, its result lines (those matching $2) in the summary
run() {
  local log=$1 pattern=$2; shift 2
  "$@" > "$log.part" 2>&1; local rc=$?
  grep -E "$pattern" "$log.part" | tail -n 40 | cut -c1-400 | tee -a "$SUMMARY"
  cat "$log.part" >> "$log"; rm -f "$log.part"
  if [ $rc -ne 0 ]; then echo "FAILED (exit $rc): $*" | tee -a "$SUMMARY"; failed=1; fi
}

if ! "$PYTHON" -c "import torch, fastgen_core, sys; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
  echo "gpu_check: $PYTHON needs fastgen installed (make install-test) and a CUDA GPU torch can see" >&2
  exit 2
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/env.txt" 2>&1
else echo "nvidia-smi: not on PATH" > "$OUT/env.txt"; fi
"$PYTHON" -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'triton', triton.__version__)" >> "$OUT/env.txt" 2>&1
tee -a "$SUMMARY" < "$OUT/env.txt"

BENCH=("$PYTHON" -m fastgen_core.cli bench --max-ragged-batch-size 2048 --peer none --output "$OUT/bench.jsonl")
RESULT="^fastgen|^online|Error"

if has tests; then
  step "GPU tests: python -m pytest -q -s tests/gpu"
  run "$OUT/gpu-tests.log" "passed|failed|^FAILED|^ERROR|^AGREEMENT" \
    "$PYTHON" -m pytest -q -s -rs -p no:cacheprovider tests/gpu
fi
if has offline; then   # the offline table of docs/performance.md
  step "offline: Phi-2 128 requests 1200/60 and 1200/128"
  run "$OUT/bench.log" "$RESULT" "${BENCH[@]}" --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 128
  gib=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_properties(0).total_memory >> 30)")
  for preset in llama-2-7b falcon-7b mixtral-8x7b; do
    if [ $preset = mixtral-8x7b ] && [ "${gib:-0}" -le 110 ]; then
      step "offline: $preset skipped: its 93 GB of weights need a card of more than 110 GiB (this one: ${gib} GiB)"
      continue
    fi
    step "offline: $preset 64 requests 1200/60"
    run "$OUT/bench.log" "$RESULT" "${BENCH[@]}" --preset $preset --num-requests 64 --prompt-mean 1200 --gen-mean 60
  done
fi
if has online; then    # Phi-2's rows of the online table: 1 client, then 1 and 32
  step "online: Phi-2 1200/60 at 1 client"
  run "$OUT/bench.log" "$RESULT" "${BENCH[@]}" --preset phi-2 --num-requests 16 --prompt-mean 1200 --gen-mean 60 \
    --online 1 --no-offline
  step "online: Phi-2 1200/60 at 1 and 32 clients"
  run "$OUT/bench.log" "$RESULT" "${BENCH[@]}" --preset phi-2 --num-requests 64 --prompt-mean 1200 --gen-mean 60 \
    --online 1,32 --no-offline
fi
if has profile; then   # "Where a prompt step goes"
  step "profile: Phi-2 steps of 2048 prompt tokens"
  run "$OUT/profile-phi2-prefill.txt" "^prefill|head_busy|Error" "$PYTHON" tools/profile_steps.py --preset phi-2 \
    --budget 2048 --requests 32 --prompt 1200 --gen 1 --equal-gen --top 20 --json "$OUT/profile.jsonl"
fi
echo "results in $OUT (summary: $SUMMARY)"
exit $failed
