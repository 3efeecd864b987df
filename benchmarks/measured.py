"""Run `python -m MODULE ARGS...` in this process and report its wall time and peak memory.

    python -m benchmarks.measured pipelines.compress_users --input ... --output ...

The last stderr line is `MEASURED {"wall_s": ..., "peak_rss_mb": ..., "peak_gpu_mib": ..., "exit": ...}`;
peak RSS covers this process and any worker processes it waited for; peak GPU memory (0 when
CUDA was not used) only this process (the in-process runner's model lives here).
"""
import json
import resource
import runpy
import sys
import time


def peak_gpu_mib() -> float:
    """Peak CUDA memory the module allocated in this process (torch only looked up, never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0.0
    return torch.cuda.max_memory_allocated() / 2 ** 20


def main() -> None:
    module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
    start, code = time.perf_counter(), 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    wall = time.perf_counter() - start
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("MEASURED " + json.dumps({"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "peak_gpu_mib": peak_gpu_mib(),
                                    "exit": code}),
          file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
