"""commer.cpu_memory: freed activation memory stays with the process, counted in page faults (not timed).

Each case runs in a fresh interpreter: the thresholds are process-wide, and the count depends on what the
process allocated before."""
import json
import subprocess
import sys

import pytest

# Ten 8 MB blocks (2,048 pages each) allocated and freed, as a forward pass's activations are; the page
# faults per round once the allocator has seen two rounds.
CYCLE = """
import json, resource, sys
import torch
from commer.cpu_memory import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retain" else None
def cycle():
    blocks = [torch.ones(2 << 20) for _ in range(10)]
    del blocks
for _ in range(2):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    cycle()
print(json.dumps({"retained": retained, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 16}))
"""
BLOCK_PAGES = 2048

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def faults_per_round(mode: str, env: dict | None = None) -> dict:
    import os
    out = subprocess.run([sys.executable, "-c", CYCLE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_is_not_faulted_in_again():
    # glibc's own moving thresholds map ~1,300 pages in again per round here (in most processes: the count
    # depends on the heap's layout, and one in ten read ~128); retained, 0-128 in every process.
    retained = faults_per_round("retain")
    assert retained["retained"] is True
    assert retained["faults"] <= BLOCK_PAGES / 8


def test_a_users_malloc_setting_stands():
    result = faults_per_round("retain", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert result["retained"] is False


def test_loading_a_model_retains(tiny_backbone):
    from commer import load_backbone
    from commer.cpu_memory import thresholds_set
    load_backbone(tiny_backbone)
    assert thresholds_set() is True
