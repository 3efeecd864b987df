"""Token-budget batching and packed compression in the main job (issue 12): budgets hold, packed and
differently batched runs give the same compressions, and the defaults give the numbers of before."""
import json
import random

import numpy as np
import pytest
import torch

from batching_helpers import job_batches, measure
from commer import ComMer
from commer.checkpoint import read_config
from commer.packing import cost, plan_batches
from pipelines.compress_users import SAMPLE_INPUT, main, run
from pipelines.batching import DEFAULT_BATCH_TOKENS, Batching, split_batches
from pipelines.elements import TokenizedDocument
from pipelines.inference import load_tokenizer, resolve_device, shared_model, tokenize
from pipelines.io import match
from pipelines.runtime import run_cli
from schemas import DocumentCompression, Profile, from_table, read_parquet

K = 4


def positions(batch, packed: bool) -> int:
    """What a batch really costs the model: Σ (tokens + K) packed, rows × the longest row padded."""
    costs = [cost(len(doc.token_ids), K) for doc in batch]
    return sum(costs) if packed else len(costs) * max(costs)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cap", [None, 5])
def test_batches_never_exceed_the_budget_and_lose_nothing(packed, cap):
    rng = random.Random(1)
    docs = [TokenizedDocument("u", f"d{i}", [7] * rng.choice([1, 3, 20, 60, 61, 200, 400])) for i in range(500)]
    budget = 256
    batching = Batching(K=K, max_batch_tokens=budget, packed=packed, max_batch_documents=cap)
    batches = list(split_batches(("bucket", iter(docs)), batching, budget, window_batches=4))
    assert sorted(x.doc_id for b in batches for x in b) == sorted(d.doc_id for d in docs)  # each exactly once
    for b in batches:
        assert len(b) == 1 or positions(b, packed) <= budget  # only a too-long document goes over, alone
        assert cap is None or len(b) <= cap
    assert any(len(b) > 1 for b in batches)


def test_reruns_form_the_same_batches_whatever_the_arrival_order():
    docs = [TokenizedDocument("u", f"d{i}", [1] * (i % 37 + 1)) for i in range(300)]
    batching = Batching(K=K, max_batch_tokens=300)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    ids = [[[x.doc_id for x in b] for b in split_batches(("k", iter(d)), batching, 300, window_batches=1000)]
           for d in (docs, shuffled)]
    assert ids[0] == ids[1]


def test_the_default_budget_is_the_workers_devices():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Batching(K=K).budget("cpu") == DEFAULT_BATCH_TOKENS["cpu"] == 1024
    assert Batching(K=K).budget("cuda") == DEFAULT_BATCH_TOKENS["cuda"]
    assert Batching(K=K, max_batch_tokens=77).budget("cuda") == 77  # a flag always wins


def test_auto_device_and_dtype_resolve_on_the_worker(tiny_checkpoint, commer_cache):
    model = shared_model(tiny_checkpoint, None, "auto", "auto", commer_cache)
    if not torch.cuda.is_available():
        assert model.device.type == "cpu" and str(model.dtype) == "torch.float32"
        assert shared_model(tiny_checkpoint, None, "float32", "cpu", commer_cache) is model  # one model, not two


@pytest.mark.parametrize("flags, complaint", [
    (["--packed"], "--packed needs --max_batch_tokens"),
    (["--max_batch_tokens", "0"], "--max_batch_tokens must be positive"),
    (["--batch_size", "-2"], "--batch_size must be positive"),
])
def test_invalid_batching_flags_are_one_line(tmp_path, tiny_checkpoint, capsys, flags, complaint):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--checkpoint", tiny_checkpoint, "--output", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"error: {complaint}") and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---- the job on the shipped sample corpus ------------------------------------------------

def sample_job(tmp_path, tiny_checkpoint, commer_cache, name, *flags):
    out, stored = tmp_path / name, tmp_path / f"{name}-compressions"
    summary = run(["--output", str(out), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache,
                   "--document_compressions_output", str(stored),
                   "--direct_running_mode=in_memory", *flags])
    profiles = {p.user_id: p for p in from_table(read_parquet(str(out)), Profile)}
    compressions = {(c.user_id, c.doc_id): c.compression
                    for c in from_table(read_parquet(str(stored)), DocumentCompression)}
    return summary, profiles, compressions


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_checkpoint, commer_cache):
    return sample_job(tmp_path_factory.mktemp("default"), tiny_checkpoint, commer_cache, "out")


def assert_close(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-5):
    """Within `tolerance` of the reference's scale (the tiny model's states are O(1))."""
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= tolerance * max(1.0, float(np.max(np.abs(b))))


def test_default_profiles_equal_the_count_batched_ones_of_before(default_run, tiny_checkpoint, commer_cache):
    summary, profiles, _ = default_run
    rows = [json.loads(line) for f in match(SAMPLE_INPUT, "--input") for line in open(f, encoding="utf-8")]
    assert summary["reconciled"] and summary["documents_compressed"] == len(rows)
    model = ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)
    by_user = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row["text"])
    assert sorted(profiles) == sorted(by_user)
    for user, texts in by_user.items():  # before: length-sorted batches of 16 documents
        before = model.compress(texts, batch_size=16).numpy().astype(np.float64).mean(0)
        assert_close(profiles[user].soft_prompt, before)


def test_the_job_forms_the_batches_planned_in_plain_python(default_run, tiny_checkpoint, commer_cache):
    """run_summary.json's batches are those of the plain-Python chain (tests/pipelines/batching_helpers.py) on
    the same documents: the Beam wiring (sizes side input, keys, GroupByKey, SplitBatches) adds no batch."""
    summary, _, _ = default_run
    rows = [json.loads(line) for f in match(SAMPLE_INPUT, "--input") for line in open(f, encoding="utf-8")]
    tokenizer = load_tokenizer(tiny_checkpoint, None, commer_cache)
    limit = read_config(tiny_checkpoint).max_document_tokens
    docs = [TokenizedDocument(r["user_id"], r["doc_id"], tokenize(tokenizer, r["text"], limit)[0]) for r in rows]
    budget = DEFAULT_BATCH_TOKENS["cpu"]
    want = job_batches(docs, Batching(K=K), budget)
    got = summary["batches"]
    loop = plan_batches([len(d.token_ids) for d in docs], budget, K, padded=True)
    assert got["count"] == len(want) == len(loop)  # a small job: the loop's batches
    assert got["documents"]["mean"] * got["count"] == pytest.approx(summary["documents_compressed"], abs=0.01)
    assert (got["documents"]["min"], got["documents"]["max"]) == (min(map(len, want)), max(map(len, want)))
    assert got["mean_fill"] == pytest.approx(measure(want, K, budget)["fill"], abs=1e-3)


def test_packed_equals_padded(default_run, tmp_path, tiny_checkpoint, commer_cache):
    summary, profiles, compressions = sample_job(tmp_path, tiny_checkpoint, commer_cache, "packed",
                                                 "--packed", "--max_batch_tokens", "256")
    _, want_profiles, want = default_run
    assert summary["padding_efficiency"] == 1.0 and summary["counters"]["padding_tokens"] == 0
    assert sorted(compressions) == sorted(want)
    for key in want:
        assert_close(compressions[key], want[key])
    for user in want_profiles:
        assert_close(profiles[user].soft_prompt, want_profiles[user].soft_prompt)


def test_batch_invariance_in_the_job(default_run, tmp_path, tiny_checkpoint, commer_cache):
    """Each document alone (a budget below any document) gives what the default mixed batches give."""
    summary, _, compressions = sample_job(tmp_path, tiny_checkpoint, commer_cache, "alone", "--max_batch_tokens", "1")
    default_summary, _, want = default_run
    assert summary["padding_efficiency"] == 1.0 and default_summary["padding_efficiency"] < 1.0
    # Each document its own batch, over many keys (each document is worth a batch of the 1-position budget).
    assert summary["batches"]["count"] == summary["documents_compressed"]
    assert summary["batches"]["documents"] == {"mean": 1, "min": 1, "max": 1}
    for key in want:
        assert_close(compressions[key], want[key])
