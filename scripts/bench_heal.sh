#!/usr/bin/env bash
# Heal rows of BENCHMARKS.md (Heal): the benchmark matrix's protocol (SmolLM2-135M fp32 on CPU, 8x512
# builtin calibration tokens, seed 0, the first 16 windows of 512 tokens of the builtin held-out
# split) plus a heal stage of 50 steps on 50 disjoint calibration-split windows of 256 tokens.
# Each run reports the perplexity before heal (the row without heal) and after it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
OUT=${OUT:-bench_out/heal}
COMMON=(--calib builtin --nsamples 8 --seqlen 512 --seed 0 --device cpu --dtype float32
        --eval builtin --eval-windows 16 --heal-steps 50 --set nsamples=50 --set seqlen=256 --force)
run() {  # id, method flags...
  local id=$1; shift
  echo "== $id: svdc compress smollm2-135m $* ${COMMON[*]} -o $OUT/$id"
  # `script` gives rich a terminal, so $OUT/$id.log shows the live progress (step i/N, loss, ETA)
  script -qec "/usr/bin/time -v $PY -m compressor compress smollm2-135m $* ${COMMON[*]} -o $OUT/$id" \
    "$OUT/$id.log" > /dev/null || { tail -c 2000 "$OUT/$id.log"; return 1; }
}
mkdir -p "$OUT"
for id in "$@"; do
  case $id in
    wsvd-r0.2+heal) run "$id" --method whitened-svd --ratio 0.2 ;;
    wsvd-r0.3+heal) run "$id" --method whitened-svd --ratio 0.3 ;;
    gptq-w3+eora-r32+heal) run "$id" --method eora --bits 3 --group-size 128 --rank 32 ;;
    lqlora-r8-b3.375+heal) run "$id" --recipe scripts/heal_rows/lqlora-r8-b3.375.yaml ;;
    *) echo "unknown row $id"; exit 2 ;;
  esac
done
