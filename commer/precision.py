"""Which device and floating-point type the backbone runs in: the one "auto" rule.

Every entry point (the Beam jobs on their workers, the training recipe, the benchmarks) resolves
`auto` here, so the rule changes in one place. The device first: CUDA when this process has it.
Then the type, by device: bfloat16 on CUDA (tensor cores: several times the float32 matmul rate,
half the memory); float32 everywhere else. On a CPU with native bfloat16 compression is 1.92x faster
(benchmarks/RESULTS.md section 9), but the quality gate for choosing it automatically failed on the
default checkpoint (own-4 perplexity +0.15%, beyond noise; README, 'bfloat16 on CPU'), so there it stays
an explicit --dtype bfloat16; where bfloat16 is emulated it is slower than float32. An explicit device
or dtype (a flag) always wins. The compressions' deviation from float32 is measured by
`python -m benchmarks.compression_forward --dtypes float32,bfloat16`.
"""
from __future__ import annotations

import torch

DTYPE_NAMES = ("float32", "bfloat16")
AUTO = (None, "", "auto")


def resolve_device(device: str | None) -> str:
    """An explicit device as given; for None / 'auto', 'cuda' when this process has a CUDA device,
    else 'cpu' (decided where the model runs: a Dataflow launcher has no GPU, its workers may)."""
    if device in AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# x86: AVX-512 BF16 (Cooper Lake, Zen 4 and later) or AMX-BF16 (Sapphire Rapids and later); Arm: the BF16
# extension (Neoverse V1/N2, Graviton 3 and later). Elsewhere PyTorch emulates bfloat16 arithmetic through
# float32 conversions, slower than float32 itself.
NATIVE_BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (its /proc/cpuinfo flags, Linux; False where
    they cannot be read). `cpuinfo`: the file's text, for tests."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and NATIVE_BFLOAT16_FLAGS & set(value.split()):
            return True
    return False


def default_dtype(device: torch.device | str) -> str:
    """'bfloat16' on CUDA, 'float32' elsewhere (the name ComMer.from_pretrained(dtype=...) takes)."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def emulated_bfloat16(device: str, dtype: str) -> bool:
    """An explicit bfloat16 on a CPU that would emulate it (slower than float32: worth a warning)."""
    return dtype == "bfloat16" and torch.device(device).type == "cpu" and not native_bfloat16()


def resolve_dtype(dtype: str | None, device: torch.device | str) -> str:
    """An explicit dtype name as given (checked), or the device's default for None / 'auto'."""
    if dtype in AUTO:
        return default_dtype(device)
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {DTYPE_NAMES} or 'auto'")
    return dtype


def resolve(device: str | None, dtype: str | None) -> tuple[str, str]:
    """(device, dtype) with 'auto' resolved for this process: the device, then its dtype."""
    device = resolve_device(device)
    return device, resolve_dtype(dtype, device)
