"""Recency-weighted profiles: `python -m training.evaluate_recency --help`.

The command line of training/evaluation/recency.py (the split by date, the flags, the outputs),
kept under this name because the results in docs/evaluation/ quote it.
"""
import sys

from training.evaluation.recency import main

if __name__ == "__main__":
    sys.exit(main())
