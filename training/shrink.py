"""Shrink a trained checkpoint's LoRA rank by truncated SVD, so the bundled checkpoint stays small.

Each adapter adds ΔW = (alpha / r)·B·A to a frozen weight. Its best rank-k approximation
(Eckart–Young) is the top k singular triplets of ΔW; they are found from the r×r core of the
QR factors, never forming the full out×in matrix:

    B = Q_b R_b,  Aᵀ = Q_a R_a,  ΔW = Q_b (scale·R_b R_aᵀ) Q_aᵀ,  scale·R_b R_aᵀ = U S Vᵀ
    B' = Q_b U_k S_k^½,  A' = S_k^½ V_kᵀ Q_aᵀ,  alpha' = k (scale 1)

The compression embeddings are copied unchanged. Whether the smaller adapter is as good is a
measurement, not a given: evaluate it (e.g. training.evaluate_controls on validation authors).

    python -m training.shrink --checkpoint runs/recipe/final --rank 8 --output runs/recipe/final-r8
"""
from __future__ import annotations

import argparse
import sys

import torch

from commer import ComMer
from commer.backbone import BackboneError
from commer.checkpoint import CheckpointError


def truncate(a: torch.Tensor, b: torch.Tensor, scale: float, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A', B', energy kept): B'·A' is the best rank-`rank` approximation of scale·B·A; energy is
    the share of ΔW's squared Frobenius norm the kept singular values carry."""
    a, b = a.double(), b.double()
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(scale * r_b @ r_a.T)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    new_b = q_b @ (u[:, :k] * root)
    new_a = (root[:, None] * vh[:k]) @ q_a.T
    energy = float((s[:k] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30))
    return new_a.float(), new_b.float(), energy


def adapters(model: ComMer) -> dict[str, torch.nn.Module]:
    """The model's LoRA layers by name (peft keeps A, B and the scale per adapter name)."""
    return {name: m for name, m in model.lm.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def shrink(model: ComMer, rank: int, cache: str | None = None) -> tuple[ComMer, dict]:
    """A new ComMer with every adapter truncated to `rank`; the record says how much was kept."""
    if rank >= model.config.lora.r:
        raise ValueError(f"--rank {rank} is not below the checkpoint's LoRA rank {model.config.lora.r}")
    lora = model.config.lora.model_copy(update={"r": rank, "alpha": rank})
    small = ComMer.from_backbone(model.config.backbone, model.config.model_copy(update={"lora": lora}), cache=cache)
    small.compression_embeddings.data.copy_(model.compression_embeddings.data)
    if model.task_prompt is not None:  # the checkpoint's own task prompt is no adapter: kept as it is
        small.task_prompt.data.copy_(model.task_prompt.data)
    energies = []
    targets = adapters(small)
    with torch.no_grad():
        for name, layer in adapters(model).items():
            a, b, energy = truncate(layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                                    float(layer.scaling["default"]), rank)
            targets[name].lora_A["default"].weight.copy_(a)
            targets[name].lora_B["default"].weight.copy_(b)
            energies.append(energy)
    record = {"from_rank": model.config.lora.r, "to_rank": rank, "adapters": len(energies),
              "energy_kept_mean": sum(energies) / len(energies), "energy_kept_min": min(energies)}
    small.config = small.config.model_copy(update={
        "trained": True, "training": {**model.config.training, "shrunk": record}})
    return small.eval(), record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.shrink", description="Shrink a ComMer checkpoint's LoRA rank by truncated SVD.")
    p.add_argument("--checkpoint", required=True, help="Trained ComMer checkpoint folder.")
    p.add_argument("--rank", type=int, required=True, help="New LoRA rank (below the checkpoint's).")
    p.add_argument("--output", required=True, help="Folder for the shrunk checkpoint.")
    p.add_argument("--weights_dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="Stored precision of the weights (bfloat16 halves the files).")
    p.add_argument("--cache_dir", default=None, help="Backbone cache folder.")
    args = p.parse_args(argv)
    if args.rank < 1:
        print("error: --rank must be at least 1", file=sys.stderr)
        return 2
    try:
        model = ComMer.from_pretrained(args.checkpoint, cache=args.cache_dir)
        small, record = shrink(model, args.rank, args.cache_dir)
    except (CheckpointError, BackboneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    small.save_pretrained(args.output, weights_dtype=args.weights_dtype)
    print(f"{args.output}: LoRA rank {record['from_rank']} -> {record['to_rank']} on {record['adapters']} adapters, "
          f"energy kept mean {record['energy_kept_mean']:.3f} (min {record['energy_kept_min']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
