"""Does a change that should not matter (float32 → bfloat16) change what matters? Pairs two runs of
training.evaluate_controls on the same examples.

    python -m training.evaluation.compare_runs eval/controls-fp32 eval/controls-bf16 --gate 0.005

Reads each run's scored rows (OUTPUT/partial/: per-example answer NLL, answer tokens, ROUGE), refuses
runs that did not score the same examples, and for each row both runs have gives run B minus run A:
perplexity and ROUGE-L with paired bootstrap 95% intervals (the SAME examples resampled in both runs,
seeded), relative to A; and each run's own/other perplexity ratio (the personalization control) with
the interval of their difference. Issue 27's gate: a row passes when each difference's interval
contains 0 and its size is at most --gate of A's value; the control passes when its interval contains 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from training.evaluation.statistics import interval, token_perplexity

OWN, OTHER = "ComMer own 4", "ComMer other 4"


class RunMismatch(ValueError):
    """The two runs cannot be paired (different examples, or a row missing)."""


def scored_rows(folder: str | Path) -> tuple[list[str], dict[str, dict]]:
    """(example ids, label → {'nll', 'tokens'[, 'rougeL']} arrays) of one evaluation run's saved rows."""
    partial = Path(folder) / "partial"
    files = sorted(partial.glob("*.json"))
    if not files:
        raise RunMismatch(f"{folder}: no scored rows in {partial} (an evaluate_controls --output folder?)")
    examples, rows = None, {}
    for path in files:
        saved = json.loads(path.read_text())
        ids = saved["signature"]["examples"]
        if examples is not None and ids != examples:
            raise RunMismatch(f"{path}: scored other examples than the rest of {folder}")
        examples = ids
        arrays = {k.lstrip("_"): np.asarray(v, float) for k, v in saved["arrays"].items()}
        rows[saved["row"]["label"]] = arrays
    return examples, rows


def compare(a: dict[str, dict], b: dict[str, dict], labels: list[str], gate: float, resamples: int = 1000,
            seed: int = 0) -> dict:
    """The differences B − A per label, the control's, and whether each passes the gate."""
    missing = [label for label in labels if label not in a or label not in b]
    if missing:
        raise RunMismatch(f"rows missing from a run: {missing}")
    n = len(a[labels[0]]["nll"])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    result: dict = {"rows": {}, "gate": gate}
    samples = {}
    for label in labels:
        ra, rb = a[label], b[label]
        ppl_a, ppl_b = token_perplexity(ra["nll"], ra["tokens"]), token_perplexity(rb["nll"], rb["tokens"])
        sa, sb = token_perplexity(ra["nll"], ra["tokens"], idx), token_perplexity(rb["nll"], rb["tokens"], idx)
        samples[label] = (sa, sb)
        ci = interval(sb - sa)
        row = {"perplexity": [ppl_a, ppl_b], "delta_perplexity": ppl_b - ppl_a, "delta_perplexity_ci": ci,
               "relative": (ppl_b - ppl_a) / ppl_a}
        row["pass"] = ci[0] <= 0 <= ci[1] and abs(row["relative"]) <= gate
        if "rougeL" in ra and "rougeL" in rb:
            diff = rb["rougeL"] - ra["rougeL"]
            r_ci = interval(diff[idx].mean(1))
            mean_a = float(ra["rougeL"].mean())
            row.update(rougeL=[mean_a, float(rb["rougeL"].mean())], delta_rougeL=float(diff.mean()),
                       delta_rougeL_ci=r_ci, relative_rougeL=float(diff.mean()) / max(mean_a, 1e-12))
            row["pass"] = row["pass"] and r_ci[0] <= 0 <= r_ci[1] and abs(row["relative_rougeL"]) <= gate
        result["rows"][label] = row
    if OWN in samples and OTHER in samples:
        (own_a, own_b), (other_a, other_b) = samples[OWN], samples[OTHER]
        ratio_a = token_perplexity(a[OWN]["nll"], a[OWN]["tokens"]) / token_perplexity(a[OTHER]["nll"], a[OTHER]["tokens"])
        ratio_b = token_perplexity(b[OWN]["nll"], b[OWN]["tokens"]) / token_perplexity(b[OTHER]["nll"], b[OTHER]["tokens"])
        ci = interval(own_b / other_b - own_a / other_a)
        result["own_other"] = {"ratio": [ratio_a, ratio_b], "delta": ratio_b - ratio_a, "delta_ci": ci,
                               "pass": ci[0] <= 0 <= ci[1]}
    result["pass"] = all(r["pass"] for r in result["rows"].values()) and result.get("own_other", {}).get("pass", True)
    return result


def report(result: dict, names: tuple[str, str]) -> str:
    """The comparison as markdown."""
    a, b = names
    lines = [f"B − A, A = `{a}`, B = `{b}`; paired bootstrap 95% intervals; gate |Δ| ≤ {result['gate']:.1%} "
             "of A and the interval containing 0.", "",
             "| Row | perplexity A → B | Δ [95% CI] | Δ/A | ROUGE-L A → B | Δ [95% CI] | Δ/A | passes |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in result["rows"].items():
        rouge = ("| | | " if "rougeL" not in r else
                 f"| {r['rougeL'][0]:.4f} → {r['rougeL'][1]:.4f} | {r['delta_rougeL']:+.4f} "
                 f"[{r['delta_rougeL_ci'][0]:+.4f}, {r['delta_rougeL_ci'][1]:+.4f}] | {r['relative_rougeL']:+.2%} ")
        lines.append(f"| {label} | {r['perplexity'][0]:.2f} → {r['perplexity'][1]:.2f} | {r['delta_perplexity']:+.3f} "
                     f"[{r['delta_perplexity_ci'][0]:+.3f}, {r['delta_perplexity_ci'][1]:+.3f}] | {r['relative']:+.2%} "
                     f"{rouge}| {'yes' if r['pass'] else 'NO'} |")
    if "own_other" in result:
        o = result["own_other"]
        lines += ["", f"Own/other perplexity ratio: {o['ratio'][0]:.4f} → {o['ratio'][1]:.4f}, Δ {o['delta']:+.4f} "
                      f"[{o['delta_ci'][0]:+.4f}, {o['delta_ci'][1]:+.4f}] ({'unchanged' if o['pass'] else 'CHANGED'})."]
    lines += ["", f"**Gate: {'passes' if result['pass'] else 'fails'}.**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluation.compare_runs", description=__doc__.split("\n")[0])
    p.add_argument("run_a", help="evaluate_controls --output folder of the reference (e.g. float32).")
    p.add_argument("run_b", help="The same evaluation with the change (e.g. --dtype bfloat16).")
    p.add_argument("--rows", nargs="+", default=[OWN, OTHER], help="Row labels to compare.")
    p.add_argument("--gate", type=float, default=0.005, help="Largest |Δ| as a share of run A's value.")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="Also write the result here as JSON and markdown (.json, .md).")
    args = p.parse_args(argv)
    try:
        ids_a, a = scored_rows(args.run_a)
        ids_b, b = scored_rows(args.run_b)
        if ids_a != ids_b:
            raise RunMismatch("the two runs scored different examples: evaluate both with the same --data, --split, "
                              "--max_examples and --seed")
        result = compare(a, b, args.rows, args.gate, args.resamples, args.seed)
    except RunMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report(result, (args.run_a, args.run_b))
    print(text, end="")
    if args.output:
        Path(args.output).with_suffix(".json").write_text(json.dumps(result, indent=1))
        Path(args.output).with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
