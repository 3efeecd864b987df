"""compress_users' report: the counters it reads, the run summary (run_summary.json) they make, and the
console lines (what the run did to each profile and each deletion request, reconciled)."""
from __future__ import annotations

from datetime import datetime, timezone

from pipelines.batching import batch_report
from pipelines.profile_steps import DATE_COUNTERS
from pipelines.rejections import report_reasons

COUNTERS = ("records_read", "documents_valid", "dead_lettered", "duplicates", "already_merged", "compressed",
            "truncated", "tokens", "deletions_requested", "deletions_applied", "deletions_unmatched",
            "deletions_invalid", "deletions_duplicate", "profiles_written", "profiles_new", "profiles_updated",
            "profiles_unchanged", "profiles_removed", "profiles_rebuilt", "previous_profiles_read", "padding_tokens",
            *DATE_COUNTERS)


def summarize(plan, counters: dict[str, int], seconds: float, distributions: dict[str, dict] | None = None) -> dict:
    """The run summary from compress_users' JobPlan, its COUNTERS and its distributions (the batches')."""
    accounted = (counters["compressed"] + counters["dead_lettered"] + counters["duplicates"]
                 + counters["already_merged"])
    useful = counters["tokens"] + plan.K * counters["compressed"]
    processed = useful + counters["padding_tokens"]
    return {
        "run_id": plan.run_id,
        "users": counters["profiles_written"],
        # What this run did to each user's profile (a refresh's report).
        "profiles_changed": {k: counters[f"profiles_{k}"] for k in ("new", "updated", "unchanged", "removed", "rebuilt")},
        "documents_read": counters["records_read"],
        "documents_compressed": counters["compressed"],
        "dead_letters": counters["dead_lettered"],
        "duplicates": counters["duplicates"],
        "already_merged": counters["already_merged"],
        "truncated": counters["truncated"],
        # Documents weighted and stored with a created_at set by rule (commer.recency.effective_created_at).
        "created_at_missing": counters["created_at_missing"],
        "created_at_in_future": counters["created_at_in_future"],
        # Deletion requests: each valid one applied, unmatched, or naming a document already named.
        "deletions": {k: counters[f"deletions_{k}"] for k in ("requested", "applied", "unmatched", "duplicate", "invalid")},
        "reconciled": counters["records_read"] == accounted and counters["deletions_requested"] == (
            counters["deletions_applied"] + counters["deletions_unmatched"] + counters["deletions_duplicate"]),
        "seconds": round(seconds, 3),
        "documents_per_second": round(counters["compressed"] / seconds, 2) if seconds > 0 else None,
        # Positions the model ran over (document tokens + K slots + padding), and the useful share.
        "processed_positions": processed,
        "padding_efficiency": round(useful / processed, 4) if processed else None,
        # The model calls: how many, documents and positions per batch, mean fill of the token budget.
        "batches": batch_report(distributions or {}),
        "counters": counters,
        "checkpoint": plan.checkpoint,
        "checkpoint_trained": plan.trained,
        "fingerprint": plan.fingerprint,
        "K": plan.K, "d": plan.d,
        "dtype": plan.dtype,  # what every compression of this run was computed in (also in the tables' metadata)
        "input": plan.input,
        "profiles": f"{plan.output}/profiles",
        "dead_letter_output": plan.dead_letter_output,
        "document_compressions_output": plan.document_compressions_output,
        "previous_profiles": bool(plan.previous_profile_files),
        "half_life_days": plan.half_life_days,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }


def print_report(summary: dict) -> None:
    """The console lines of a finished run."""
    changed = summary["profiles_changed"]
    print(f"users: {summary['users']} ({changed['new']} new, {changed['updated']} updated, {changed['unchanged']} "
          f"unchanged; {changed['removed']} removed with no documents left)  documents: "
          f"{summary['documents_compressed']} compressed of {summary['documents_read']} read  dead letters: {summary['dead_letters']}  duplicates: "
          f"{summary['duplicates']}  already merged: {summary['already_merged']}  truncated: {summary['truncated']}  "
          f"created_at missing/in future: {summary['created_at_missing']}/{summary['created_at_in_future']}")
    if any(summary["deletions"].values()):
        print("deletions: {requested} requested, {applied} applied, {unmatched} matched no stored document, "
              "{duplicate} named a document twice, {invalid} invalid (dead-lettered)".format(**summary["deletions"]))
    print(f"{summary['documents_per_second']} documents/second ({summary['seconds']} s, {summary['dtype']})  "
          f"reconciled: {summary['reconciled']}")
    report_reasons(summary)
    versions = summary["committed"]
    print(f"profiles: {summary['profiles']} (version {versions.get('profiles')})  dead letters: "
          f"{summary['dead_letter_output']} (version {versions.get('dead letters')})  "
          f"summary: {summary['profiles'].rsplit('/', 1)[0]}/run_summary.json")
