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
