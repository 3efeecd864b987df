"""The main job end to end on the DirectRunner with the tiny model."""
import json
import logging
import random
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from commer import ComMer, ComMerConfig
from pipelines.compress_users import main, run
from pipelines.batching import Batching, split_batches
from pipelines.elements import TokenizedDocument
from pipelines.inference import load_tokenizer, tokenize
from delta_helpers import files as table_files, rows as table_rows
from pipelines.io import input_table
from pipelines.runtime import CliError
from schemas import DocumentCompression, Profile, from_table, read_metadata, read_parquet

SECRET = "zebra-secret-phrase"
STYLES = ["lol {w} was sooo fun", "It is worth noting that {w} matters.", "BEST {w} EVER!!!",
          "notes: {w} fixed; next: {w} again", "quiet rain over {w}"]
WORDS = ["coffee", "hiking", "markets", "the harbour", "football", "risotto", "the final boss", "trains"]


def corpus(users=8, seed=0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        for d in range(rng.randint(3, 6)):
            text = " ".join(STYLES[(u + d) % len(STYLES)].format(w=rng.choice(WORDS)) for _ in range(1 + d * 3))
            rows.append({"user_id": f"user-{u}", "doc_id": f"doc-{d}", "text": text})
    return rows


def write_jsonl(path: Path, rows, raw_lines=()):
    with open(path, "wb") as f:
        for row in rows:
            f.write(json.dumps(row).encode() + b"\n")
        for raw in raw_lines:
            f.write(raw + b"\n")
    return path


def job(tmp: Path, checkpoint: str, cache: str, input_glob, out="out", *flags) -> dict:
    return run(["--input", str(input_glob), "--output", str(tmp / out), "--checkpoint", checkpoint,
                "--cache_dir", cache, "--direct_running_mode=in_memory", "--batch_size", "4", *flags])


def dtype_job(dtype: str, *args) -> dict:
    return job(*args, "--dtype", dtype)


def profiles(folder) -> dict[str, Profile]:
    return {p.user_id: p for p in from_table(read_parquet(str(folder)), Profile)}


@pytest.fixture(scope="module")
def reference_model(tiny_checkpoint, commer_cache):
    return ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)


def expected_profiles(model, rows) -> dict[str, np.ndarray]:
    by_user = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row["text"])
    return {u: model.compress(texts, batch_size=1).numpy().astype(np.float64).mean(0) for u, texts in by_user.items()}


def assert_same_profiles(a: dict, b: dict, rtol=1e-6, atol=1e-6):
    assert sorted(a) == sorted(b)
    for user in a:
        assert a[user].doc_ids == b[user].doc_ids and a[user].doc_count == b[user].doc_count
        np.testing.assert_allclose(a[user].soft_prompt, b[user].soft_prompt, rtol=rtol, atol=atol)
        np.testing.assert_allclose(a[user].soft_prompt_sum, b[user].soft_prompt_sum, rtol=rtol,
                                   atol=atol * a[user].doc_count)


def max_rel_error(got: dict, want: dict) -> float:
    return max(float(np.max(np.abs(got[u].soft_prompt - want[u])) / np.max(np.abs(want[u]))) for u in want)


def test_end_to_end_small_corpus(tmp_path, tiny_checkpoint, commer_cache, reference_model):
    rows = corpus()
    write_jsonl(tmp_path / "a.jsonl", rows[::2])
    pq.write_table(pa.Table.from_pylist(rows[1::2]), tmp_path / "b.parquet")
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "*[lt]")
    assert summary["users"] == 8 and summary["documents_compressed"] == len(rows)
    assert summary["reconciled"] and summary["truncated"] > 0  # the longest sample docs exceed 64 tokens
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["users"] == 8

    got = profiles(tmp_path / "out")
    want = expected_profiles(reference_model, rows)
    assert max_rel_error(got, want) <= 1e-5
    fingerprint = reference_model.fingerprint()
    assert all(p.model_fingerprint == fingerprint for p in got.values())

    files = table_files(tmp_path / "out")  # the profiles table's current version
    df = pd.read_parquet(files[0])
    K, d = df.attrs["tensor_shape"]
    assert (K, d) == (4, 64) and df.attrs["commer"]["fingerprint"] == fingerprint
    assert df.attrs["commer"]["trained"] is False
    first = df.iloc[0]
    np.testing.assert_array_equal(np.asarray(first["soft_prompt"]).reshape(K, d), got[first["user_id"]].soft_prompt)
    assert read_metadata(pq.read_schema(files[0]))["K"] == 4


def test_bad_records_reconcile_exactly(tmp_path, tiny_checkpoint, commer_cache, caplog):
    good = [{"user_id": "u1", "doc_id": f"d{i}", "text": f"{SECRET} number {i}"} for i in range(4)]
    good += [{"user_id": "u2", "doc_id": "d0", "text": "short and sweet"}]
    bad = [
        b'{"user_id": "u1", "doc_id": "x1", "text": ',                          # malformed JSON
        json.dumps({"doc_id": "x2", "text": SECRET}).encode(),                  # missing user_id
        json.dumps({"user_id": 5, "doc_id": "x3", "text": SECRET}).encode(),    # mistyped user_id
        json.dumps({"user_id": "u1", "doc_id": "x4", "text": "  "}).encode(),   # empty text
        b'{"user_id": "u1", "doc_id": "x5", "text": "\xff\xfe"}',               # not UTF-8
        json.dumps({"user_id": "u1", "doc_id": "x6", "text": SECRET * 40}).encode(),  # oversized
        json.dumps({"user_id": "u1", "doc_id": "d0", "text": f"{SECRET} another take"}).encode(),  # duplicate
        json.dumps({"user_id": "u1", "doc_id": "d0", "text": f"{SECRET} number 0"}).encode(),     # duplicate
    ]
    write_jsonl(tmp_path / "bad.jsonl", good, bad)
    pq.write_table(pa.Table.from_pylist([{"user_id": "u3", "doc_id": "p1", "text": None},
                                         {"user_id": "u3", "doc_id": "p2", "text": "parquet row"}]),
                   tmp_path / "bad.parquet")
    caplog.set_level(logging.INFO)  # the CLI's level (Beam's own DEBUG logs print elements)
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "bad.*", "out", "--max_record_bytes", "400")
    c = summary["counters"]
    assert c["records_read"] == len(good) + len(bad) + 2
    assert c["dead_lettered"] == 7 and c["duplicates"] == 2 and c["compressed"] == 6
    assert c["records_read"] == c["compressed"] + c["dead_lettered"] + c["duplicates"] + c["already_merged"]
    assert summary["reconciled"] and summary["users"] == 3

    letters = table_rows(tmp_path / "out" / "dead_letters")
    assert len(letters) == 9 and all(x["reason"] and x["stage"] for x in letters)
    assert sorted(x["stage"] for x in letters).count("duplicate") == 2
    assert {x["doc_id"] for x in letters if x["stage"] == "validate"} >= {"x3", "x4", "p1"}
    assert SECRET not in caplog.text
    assert all(SECRET not in x["reason"] for x in letters)
    assert profiles(tmp_path / "out")["u1"].doc_count == 4


def test_order_sharding_and_workers_do_not_matter(tmp_path, tiny_checkpoint, commer_cache):
    rows = corpus(seed=3)
    write_jsonl(tmp_path / "one.jsonl", rows)
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "one.jsonl", "a")
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    (tmp_path / "shards").mkdir()
    for i in range(3):
        write_jsonl(tmp_path / "shards" / f"s{i}.jsonl", shuffled[i::3])
    run(["--input", str(tmp_path / "shards" / "*.jsonl"), "--output", str(tmp_path / "b"),
         "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache, "--batch_size", "3",
         "--length_bucket_tokens", "8", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert_same_profiles(profiles(tmp_path / "a"), profiles(tmp_path / "b"))


# Incremental = full recompute (DESIGN.md invariant 4), per dtype at its own tolerance. The refresh compresses its
# new documents in other batches than the full run does. float32: batch composition moves a compression by float
# rounding (this corpus batched by 4 vs by 1: max |diff| 2.4e-7). bfloat16 rounds activations to 8 significant
# bits, and batch composition moves profiles by up to 5.2e-3 (same comparison; one bfloat16 step at the largest
# values here, |x| <= 2.8, is 2^-6 = 1.6e-2). Measured once for this test: max |refresh - full| = 0.0 in both
# dtypes; bfloat16's tolerance is half a step at those values, 2^-7, still below the 1.3e-2 between its profiles
# and float32's (tests/pipelines/test_compress_users_dtype.py checks the dtypes are told apart).
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "bfloat16": dict(rtol=0, atol=2 ** -7)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_refresh_equals_full_and_rerun_is_a_no_op(tmp_path, tiny_checkpoint, commer_cache, dtype):
    rows = corpus(users=10, seed=7)
    rows.append({"user_id": "newcomer", "doc_id": "n1", "text": "a brand new user arrives"})
    old = [r for i, r in enumerate(rows) if i % 20 != 0 and r["user_id"] != "newcomer"]
    write_jsonl(tmp_path / "old.jsonl", old)
    write_jsonl(tmp_path / "all.jsonl", rows)
    job = partial(dtype_job, dtype)
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "old.jsonl", "night1")
    # The nightly input re-sends everything: only unseen doc_ids may be compressed.
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "all.jsonl", "night2",
                  "--previous_profiles", str(tmp_path / "night1"))
    assert summary["documents_compressed"] == len(rows) - len(old) and summary["dtype"] == dtype
    assert summary["already_merged"] == len(old) and summary["reconciled"]
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "all.jsonl", "full")
    night1, night2, full = (profiles(tmp_path / x) for x in ("night1", "night2", "full"))
    assert_same_profiles(night2, full, **TOLERANCE[dtype])
    assert "newcomer" in night2
    touched = {r["user_id"] for r in rows if r not in old}
    for user, profile in night2.items():
        if user in night1 and user not in touched:
            assert profile.updated_at == night1[user].updated_at
            assert np.array_equal(profile.soft_prompt, night1[user].soft_prompt)
        else:
            assert user not in night1 or profile.updated_at > night1[user].updated_at

    again = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "all.jsonl", "night3",
                "--previous_profiles", str(tmp_path / "night2" / "profiles"))
    assert again["documents_compressed"] == 0 and again["counters"]["profiles_unchanged"] == len(night2)
    night3 = profiles(tmp_path / "night3")
    for user in night2:
        assert night3[user].updated_at == night2[user].updated_at
        assert np.array_equal(night3[user].soft_prompt_sum, night2[user].soft_prompt_sum)


def test_other_fingerprint_is_refused_before_compressing(tmp_path, tiny_checkpoint, tiny_backbone, commer_cache):
    rows = corpus(users=2)
    write_jsonl(tmp_path / "in.jsonl", rows)
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "in.jsonl", "first")
    other = tmp_path / "other-checkpoint"
    ComMer.from_backbone(tiny_backbone, ComMerConfig(num_compression_tokens=4, max_document_tokens=64, seed=1,
                                                     lora={"r": 8, "alpha": 16, "dropout": 0.0}),
                         cache=commer_cache).save_pretrained(str(other))
    theirs = read_metadata(pq.read_schema(table_files(tmp_path / "first")[0]))["fingerprint"]
    with pytest.raises(CliError) as err:
        job(tmp_path, str(other), commer_cache, tmp_path / "in.jsonl", "second",
            "--previous_profiles", str(tmp_path / "first"))
    ours = json.loads((other / "commer_config.json").read_text())["fingerprint"]
    assert theirs in str(err.value) and ours in str(err.value) and ours != theirs
    assert not (tmp_path / "second").exists()


def test_deletions_are_exact(tmp_path, tiny_checkpoint, commer_cache, reference_model):
    rows = corpus(users=4, seed=11)
    rows += [{"user_id": "leaver", "doc_id": "only", "text": "goodbye everyone"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "in.jsonl", "base",
        "--document_compressions_output", str(tmp_path / "comp"))
    stored = from_table(read_parquet(str(tmp_path / "comp")), DocumentCompression)
    assert len(stored) == len(rows)

    deleted = {("leaver", "only"), (rows[0]["user_id"], rows[0]["doc_id"]), (rows[-2]["user_id"], rows[-2]["doc_id"]),
               ("nobody", "nothing")}
    write_jsonl(tmp_path / "del.jsonl", [{"user_id": u, "doc_id": d} for u, d in sorted(deleted)])
    write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(CliError, match="--previous_document_compressions"):
        job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "empty.jsonl", "x",
            "--previous_profiles", str(tmp_path / "base"), "--deletions", str(tmp_path / "del.jsonl"))
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "empty.jsonl", "after",
                  "--previous_profiles", str(tmp_path / "base"), "--deletions", str(tmp_path / "del.jsonl"),
                  "--previous_document_compressions", str(tmp_path / "comp"),
                  "--document_compressions_output", str(tmp_path / "comp2"))
    assert summary["counters"]["deletions_applied"] == 3 and summary["counters"]["deletions_unmatched"] == 1
    assert summary["counters"]["profiles_removed"] == 1
    kept = [r for r in rows if (r["user_id"], r["doc_id"]) not in deleted]
    got = profiles(tmp_path / "after")
    assert "leaver" not in got
    assert max_rel_error(got, expected_profiles(reference_model, kept)) <= 1e-5
    assert len(read_parquet(str(tmp_path / "comp2"))) == len(kept)


def test_a_document_deleted_and_sent_again_in_one_run_is_replaced(tmp_path, tiny_checkpoint, commer_cache,
                                                                  reference_model):
    """README: deleting a doc_id and sending it again in the same run replaces the document."""
    rows = [{"user_id": "u", "doc_id": "d0", "text": "the old text of d0"},
            {"user_id": "u", "doc_id": "d1", "text": "another document"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "in.jsonl", "base",
        "--document_compressions_output", str(tmp_path / "comp"))
    new = {"user_id": "u", "doc_id": "d0", "text": "a completely new text"}
    write_jsonl(tmp_path / "new.jsonl", [new])
    write_jsonl(tmp_path / "del.jsonl", [{"user_id": "u", "doc_id": "d0"}])
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "new.jsonl", "after",
                  "--previous_profiles", str(tmp_path / "base"), "--deletions", str(tmp_path / "del.jsonl"),
                  "--previous_document_compressions", str(tmp_path / "comp"),
                  "--document_compressions_output", str(tmp_path / "comp2"))
    assert summary["counters"]["deletions_applied"] == 1 and summary["documents_compressed"] == 1
    assert max_rel_error(profiles(tmp_path / "after"), expected_profiles(reference_model, [new, rows[1]])) <= 1e-5


def test_tokenizer_matches_the_model(tiny_checkpoint, commer_cache, reference_model):
    tokenizer = load_tokenizer(tiny_checkpoint, None, commer_cache)
    texts = [r["text"] for r in corpus(users=2)]
    ids, cut = reference_model.tokenize_documents(texts)
    assert [tokenize(tokenizer, t, 64) for t in texts] == list(zip(ids, cut))


def test_cli_errors_name_the_flag(tmp_path, tiny_checkpoint, capsys):
    with pytest.raises(CliError, match="--input"):
        main(["--input", str(tmp_path / "missing-*.jsonl"), "--checkpoint", tiny_checkpoint, "--output", "o"])
    with pytest.raises(CliError, match="--output is required"):  # never a silent default folder
        main(["--checkpoint", tiny_checkpoint])
    assert main(["--help"]) == 0
    assert "--previous_profiles" in capsys.readouterr().out


@pytest.mark.integration
def test_default_backbone_default_command_path(tmp_path, monkeypatch, capsys):
    from commer.checkpoint import read_config
    from commer.defaults import default_checkpoint
    docs = [{"user_id": "ada", "doc_id": f"a{i}", "text": t} for i, t in
            enumerate(["I love hiking in the mountains.", "Coffee first, then code."])]
    docs += [{"user_id": "bo", "doc_id": "b0", "text": "Markets rallied as rates fell."}]
    write_jsonl(tmp_path / "docs.jsonl", docs)
    monkeypatch.chdir(tmp_path)
    assert main(["--input", str(tmp_path / "docs.jsonl"), "--output", "commer_output"]) == 0
    out = capsys.readouterr().out
    assert "users: 2" in out and "documents/second" in out
    config = read_config(default_checkpoint())
    got = profiles(tmp_path / "commer_output")
    assert got["ada"].soft_prompt.shape == (config.num_compression_tokens, config.hidden_size)
    assert np.isfinite(got["ada"].soft_prompt).all() and got["ada"].doc_count == 2


def test_previous_outputs_resolve_from_output_folder_table_file_or_old_layout(tmp_path):
    for sub in ("profiles", "document_compressions"):
        (tmp_path / "run" / sub).mkdir(parents=True)
        pq.write_table(pa.table({"x": [1]}), tmp_path / "run" / sub / f"{sub}-0.parquet")
    run_folder = str(tmp_path / "run")  # the layout before Delta (flat shards): still read for one release
    assert input_table(run_folder, "--previous_profiles", "profiles").files[0].endswith("profiles/profiles-0.parquet")
    assert input_table(run_folder, "--previous_document_compressions", "document_compressions").files[0].endswith(
        "document_compressions/document_compressions-0.parquet")
    assert len(input_table(run_folder + "/profiles", "--previous_profiles", "profiles").files) == 1
    assert len(input_table(run_folder + "/profiles/profiles-0.parquet", "--previous_profiles", "profiles").files) == 1
    with pytest.raises(CliError, match="--previous_profiles"):
        input_table(str(tmp_path / "nothing"), "--previous_profiles", "profiles")


def test_refresh_in_place_adds_a_version_and_keeps_the_old_one_readable(tmp_path, tiny_checkpoint, commer_cache):
    rows = corpus(users=3, seed=2)
    write_jsonl(tmp_path / "old.jsonl", rows[:-2])
    write_jsonl(tmp_path / "all.jsonl", rows)
    first = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "old.jsonl", "live")
    summary = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "all.jsonl", "live",
                  "--previous_profiles", str(tmp_path / "live"))
    shards = [Path(f) for f in table_files(tmp_path / "live")]
    assert len(shards) == 1 and summary["run_id"] in shards[0].name
    assert summary["committed"]["profiles"] == 1 and first["committed"]["profiles"] == 0
    # Nothing deleted by the run: the old version's files stay (time travel) until a vacuum.
    assert sorted(p.name for p in (tmp_path / "live" / "profiles").iterdir()) == sorted(
        ["_delta_log", first["run_id"], summary["run_id"]])
    assert sum(p.doc_count for p in profiles(tmp_path / "live").values()) == len(rows)
    assert sum(r["doc_count"] for r in read_parquet(str(tmp_path / "live" / "profiles") + "@0").to_pylist()) \
        == len(rows) - 2


def test_batches_are_length_sorted_and_padding_is_small():
    """Windows of a bucket are sorted before batching, so neighbours have near-equal lengths."""
    import random

    from pipelines.batching import padding_fraction
    rng = random.Random(0)
    docs = [TokenizedDocument("u", f"d{i}", [1] * rng.randint(33, 64)) for i in range(400)]
    batches = list(split_batches(("bucket", iter(docs)), Batching(K=4, max_batch_documents=16), 16 * 68,
                                 window_batches=8))
    assert sorted(x.doc_id for b in batches for x in b) == sorted(d.doc_id for d in docs)
    assert all(len(b) <= 16 for b in batches)
    mean_padding = sum(padding_fraction([x.token_ids for x in b]) for b in batches) / len(batches)
    arrival_order = [[x.token_ids for x in docs[i:i + 16]] for i in range(0, len(docs), 16)]
    unsorted_padding = sum(map(padding_fraction, arrival_order)) / len(arrival_order)
    assert mean_padding < 0.05 and mean_padding < unsorted_padding / 4, (mean_padding, unsorted_padding)


def test_the_refresh_report_says_what_changed(tmp_path, tiny_checkpoint, commer_cache, capsys):
    """Issue 26: a refresh's report names new / updated / unchanged / removed profiles and the deletions."""
    from pipelines.compress_users import main
    from pipelines.runtime import run_cli
    base = [{"user_id": u, "doc_id": d, "text": f"{u} writes about {d}"} for u in ("a", "b", "c") for d in ("1", "2")]
    base.append({"user_id": "leaver", "doc_id": "1", "text": "goodbye"})
    write_jsonl(tmp_path / "base.jsonl", base)
    job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "base.jsonl", "base",
        "--document_compressions_output", str(tmp_path / "comp"))
    write_jsonl(tmp_path / "new.jsonl", [{"user_id": "a", "doc_id": "3", "text": "a writes again"},
                                         {"user_id": "newcomer", "doc_id": "1", "text": "hello"}])
    write_jsonl(tmp_path / "del.jsonl", [{"user_id": "leaver", "doc_id": "1"}, {"user_id": "b", "doc_id": "1"},
                                         {"user_id": "ghost", "doc_id": "9"}])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--input", str(tmp_path / "new.jsonl"), "--output", str(tmp_path / "after"),
                       "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory",
                       "--previous_profiles", str(tmp_path / "base"), "--deletions", str(tmp_path / "del.jsonl"),
                       "--previous_document_compressions", str(tmp_path / "comp")])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    assert "users: 4 (1 new, 2 updated, 1 unchanged; 1 removed with no documents left)" in out
    assert ("deletions: 3 requested, 2 applied, 1 matched no stored document, 0 named a document twice, 0 invalid "
            "(dead-lettered)") in out
    summary = json.loads((tmp_path / "after" / "run_summary.json").read_text())
    assert summary["profiles_changed"]["new"] == 1 and summary["deletions"]["applied"] == 2
