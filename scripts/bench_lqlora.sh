#!/usr/bin/env bash
# Issue 27's rows: LQ-LoRA at 3.375 bits/weight against RTN and GPTQ 3-bit g64 on the same job
# (SmolLM2-135M fp32 on CPU, 16x512 builtin calibration tokens, seed 0), run one after another in
# one invocation so the time ratio comes from one run. Each output is scored on the first 16
# windows of 512 tokens of the builtin held-out split (in the compress report) and of the news
# text outside the repository (lee_background.cor from the gensim 4.4.0 wheel: scripts/frontier.py
# fetches it), and its /usr/bin/time -v log is kept beside it. Summarize with
#   python scripts/bench_lqlora_table.py bench_out/lqlora
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench_out/lqlora}
NEWS=${NEWS:-bench_out/frontier/lee_news.txt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--calib builtin --nsamples 16 --seqlen 512 --seed 0 --device cpu --dtype float32
        --eval builtin --eval-windows 16 --force)
LQ=(--method lqlora --bits 3.375 --rank 8 --set 'nf_bits=[2,3,4]' --set 'block_sizes=[64,256,1024]'
    --set svd_method=randomized)
run() {  # id, method flags...
  local id=$1; shift
  echo "== $id: svdc compress smollm2-135m $* ${COMMON[*]} -o $OUT/$id"
  /usr/bin/time -v -o "$OUT/$id.time" $PY -m compressor compress smollm2-135m "$@" "${COMMON[@]}" \
    -o "$OUT/$id" > "$OUT/$id.log" 2>&1 || { tail -c 2000 "$OUT/$id.log"; return 1; }
  $PY -m compressor eval "$OUT/$id" --dataset "$NEWS" --split all --seqlen 512 --max-windows 16 \
    --json > "$OUT/$id.news.json" 2> "$OUT/$id.news.log"
}
mkdir -p "$OUT"
[ -f "$NEWS" ] || $PY -c "import sys; sys.path.insert(0, 'scripts'); import frontier; frontier.news_text()"
for id in "$@"; do
  case $id in
    gptq3g64) run "$id" --method gptq --bits 3 --group-size 64 ;;
    rtn3g64) run "$id" --method rtn --bits 3 --group-size 64 ;;
    lqlora) run "$id" "${LQ[@]}" ;;
    lqlora-it8) run "$id" "${LQ[@]}" --set max_iters=8 ;;
    lqlora+heal100) run "$id" --recipe scripts/heal_rows/lqlora-r8-b3.375-heal100.yaml ;;
    *) echo "unknown row $id"; exit 2 ;;
  esac
done
