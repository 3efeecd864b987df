#!/usr/bin/env bash
# Calls 1..N-1 on the GPU machine: check this call's slice of the backbone and copy it out of the
# repo copy to $GPU_STASH (default /root/w), where the last call (final.sh) reassembles the GGUF.
# The stash lives only as long as the machine: a machine stays warm 30 s after a call, so make
# the next call at once.           usage: bash tools/gpu/stash.sh .gpu/cK
set -euo pipefail
src=${1:?usage: stash.sh .gpu/cK (the folder this call carries)}
STASH=${GPU_STASH:-/root/w}
ls "$src"/gguf.part*.sha256 >/dev/null 2>&1 || { echo "no slice in $src: was it named in carry?" >&2; exit 2; }
mkdir -p "$STASH"
(cd "$src" && sha256sum -c gguf.part*.sha256)
cp -r "$src"/. "$STASH"/
echo "stash $STASH now holds:"; ls -l "$STASH"
