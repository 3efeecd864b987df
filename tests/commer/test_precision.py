"""commer.precision: the one "auto" rule for device and dtype that every entry point resolves."""
import torch

from commer.precision import resolve, resolve_device


def test_auto_device_is_cuda_only_where_this_process_has_it():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == resolve_device(None) == resolve_device("") == expected
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda") == "cuda"  # a flag wins


def test_resolve_decides_the_device_then_its_dtype():
    assert resolve("cpu", "auto") == ("cpu", "float32")
    assert resolve("cuda", None) == ("cuda", "bfloat16")  # no GPU needed to decide
    assert resolve("cuda", "float32") == ("cuda", "float32")
    assert resolve("auto", "auto") == (resolve_device("auto"), "bfloat16" if torch.cuda.is_available() else "float32")


def test_native_bfloat16_is_read_from_the_cpu_flags():
    from commer.precision import native_bfloat16
    assert native_bfloat16("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw avx512_bf16 amx_tile\n")
    assert native_bfloat16("flags\t\t: fpu avx512f amx_bf16\n")
    assert native_bfloat16("Features\t: fp asimd sve bf16 i8mm\n")  # Arm (Graviton 3)
    assert not native_bfloat16("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")  # AVX-512 without BF16: emulated
    assert not native_bfloat16("model name\t: something bf16-ish\n")  # only the flag lines count
    assert not native_bfloat16("")
