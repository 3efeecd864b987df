"""Evaluation with controls: `python -m training.evaluate_controls --help`.

The command line of training/evaluation/controls.py (the rows, the flags, the outputs), kept
under this name because the results in docs/evaluation/ quote it.
"""
import sys

from training.evaluation.controls import main

if __name__ == "__main__":
    sys.exit(main())
