"""The evaluations behind docs/evaluation/: one module per experiment, on shared parts.

    statistics.py      token-level perplexity, paired bootstrap intervals, Figure 4's power-law fit
    rows.py            a planned row (label, group, method, n, examples)
    row_cache.py       scored rows kept for --resume, keyed by the weights' fingerprint
    reports.py         rows.jsonl, the markdown tables and the plots
    cli.py             the shared command-line entry (one-line errors) and progress lines
    controls.py        the evaluation with controls        (python -m training.evaluate_controls)
    retrieved_rows.py  its query-time merge rows (--retrieved_top_m)
    recency.py         recency-weighted profiles            (python -m training.evaluate_recency)
"""
