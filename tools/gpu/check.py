"""GPU smoke check for the kit: the bundled checkpoint on the reassembled backbone.

Loads the default checkpoint (the first load dequantizes the carried GGUF into $COMMER_CACHE_DIR),
prints where the backbone and the libraries came from, the backbone identity and the checkpoint
fingerprint (same numbers as on the CPU machine means the carried pins and GGUF are the right
ones), then compresses and generates on the device.
    python tools/gpu/check.py [--device auto] [--dtype auto]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from commer import ComMer
from commer.backbone import default_gguf_path
from commer.defaults import default_checkpoint
from commer.precision import resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()
    args.device, dtype = resolve(args.device, args.dtype)
    t0 = time.perf_counter()
    checkpoint = default_checkpoint()
    recorded = json.loads((Path(checkpoint) / "commer_config.json").read_text())
    model = ComMer.from_pretrained(checkpoint, dtype=dtype).to(args.device)
    load_s = time.perf_counter() - t0
    docs = ["I run 10k every Sunday, rain or shine.", "Signed up for my first trail marathon in May."]
    t0 = time.perf_counter()
    with torch.no_grad():
        prompt = model.compress(docs).mean(dim=0)
        answer = model.generate([prompt], ["Write a headline for my next post."], max_new_tokens=20)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({
        "gguf": str(default_gguf_path()), "backbone": model.identity.describe(),
        "backbone_hash": model.identity.content_hash, "fingerprint": model.fingerprint(),
        "device": args.device, "dtype": dtype, "load_s": round(load_s, 1),
        "compress_generate_s": round(time.perf_counter() - t0, 2), "soft_prompt_shape": list(prompt.shape),
        "answer": answer[0],
        # Both as recorded in the bundled checkpoint: the carried GGUF and pins reproduce the backbone.
        "backbone_hash_matches_checkpoint": model.identity.content_hash == recorded.get("backbone_hash"),
        "fingerprint_matches_checkpoint": model.fingerprint() == recorded.get("fingerprint"),
    }, indent=1))


if __name__ == "__main__":
    main()
