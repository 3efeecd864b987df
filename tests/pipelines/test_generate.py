"""generate job on the tiny model (DirectRunner): join, flags, fingerprints, in-prompt baseline."""
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from commer import ComMer
from delta_helpers import rows as table_rows, versions
from pipelines.runtime import CliError, run_cli
from schemas import Profile, arrow_schema, read_parquet, write_parquet

RUNNER = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]

DOCUMENTS = {
    "user_a": {"a1": "The city council voted on the new bicycle lanes downtown.",
               "a2": "Local bakery wins award for its sourdough bread.",
               "a3": "Bicycle commuters welcome the council decision on lanes."},
    "user_b": {"b1": "Quarterly earnings beat expectations for the chip maker.",
               "b2": "Stock markets rally as inflation cools."},
}
QUERIES = [
    {"user_id": "user_a", "query_id": "q1", "instruction": "Write a headline about bicycle lanes.",
     "reference": "Council approves bicycle lanes"},
    {"user_id": "user_a", "query_id": "q2", "instruction": "Write a headline about bread.",
     "reference": "Bakery wins bread award"},
    {"user_id": "user_b", "query_id": "q3", "instruction": "Write a headline about markets.",
     "reference": "Markets rally on cooling inflation"},
    {"user_id": "user_b", "query_id": "q4", "instruction": "Write a headline about chips."},
    {"user_id": "user_nobody", "query_id": "q5", "instruction": "Write a headline about the weather.",
     "reference": "Sunny skies ahead"},
]
BAD_LINES = ['{"user_id": "user_a", "query_id": "bad1"}',           # no instruction
             'not json at all',
             '{"user_id": "", "query_id": "bad2", "instruction": "x"}',  # empty user id
             json.dumps(QUERIES[0])]                                  # duplicate query id


def write_profiles(model: ComMer, folder, fingerprint: str | None = None) -> str:
    """Profiles the way compress_users writes them: mean soft prompt, float64 sum, sorted doc ids."""
    fingerprint = fingerprint or model.fingerprint()
    records = []
    for user, docs in DOCUMENTS.items():
        ids = sorted(docs)
        compressions = model.compress([docs[i] for i in ids]).numpy().astype(np.float64)
        records.append(Profile(user_id=user, doc_count=len(ids), soft_prompt=compressions.mean(0),
                               soft_prompt_sum=compressions.sum(0), doc_ids=ids, model_fingerprint=fingerprint))
    path = folder / "profiles" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    write_parquet(records, str(path), arrow_schema(Profile, (model.K, model.hidden_size), {"fingerprint": fingerprint}))
    return str(folder)


def write_queries(path, extra_lines=()) -> str:
    path.write_text("\n".join([json.dumps(q) for q in QUERIES] + list(extra_lines)) + "\n")
    return str(path)


def write_documents(path) -> str:
    rows = [{"user_id": u, "doc_id": d, "text": t} for u, docs in DOCUMENTS.items() for d, t in docs.items()]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, commer_cache):
    return ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)


@pytest.fixture(scope="module")
def generated(tiny, tiny_checkpoint, commer_cache, tmp_path_factory):
    """One commer-mode run shared by the tests below (Beam start-up is the slow part)."""
    from pipelines import generate
    root = tmp_path_factory.mktemp("generate")
    profiles = write_profiles(tiny, root / "commer_output")
    queries = write_queries(root / "queries.jsonl", BAD_LINES)
    out = root / "predictions"
    code = generate.main(RUNNER + [f"--profiles={profiles}", f"--queries={queries}", f"--output={out}",
                                   f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}",
                                   "--max_new_tokens=6", "--batch_size=2"])
    assert code == 0
    return {"root": root, "out": out, "profiles": profiles, "queries": queries}


def _predictions(out) -> dict:
    return {r["query_id"]: r for r in read_parquet(str(out)).to_pylist()}


def test_every_valid_query_is_answered_and_unknown_user_flagged(generated, tiny):
    rows = _predictions(generated["out"])
    assert sorted(rows) == ["q1", "q2", "q3", "q4", "q5"]
    assert rows["q5"]["personalized"] is False and rows["q5"]["doc_count"] == 0
    assert all(rows[q["query_id"]]["instruction"] == q["instruction"] for q in QUERIES)  # what was asked
    assert all(rows[q]["personalized"] for q in ("q1", "q2", "q3", "q4"))
    assert rows["q1"]["doc_count"] == 3 and rows["q3"]["doc_count"] == 2
    assert {r["model_fingerprint"] for r in rows.values()} == {tiny.fingerprint()}
    # ComMer's prompt = K soft tokens + the instruction's tokens.
    assert rows["q1"]["prompt_tokens"] == tiny.K + len(tiny.prompt_ids(QUERIES[0]["instruction"]))
    assert rows["q5"]["prompt_tokens"] == len(tiny.prompt_ids(QUERIES[4]["instruction"]))


def test_predictions_match_direct_model_calls(generated, tiny):
    """Greedy answers and perplexities equal calling the model directly with the stored profile."""
    rows = _predictions(generated["out"])
    profiles = {r.user_id: r for r in __import__("schemas").from_table(
        read_parquet(generated["profiles"] + "/profiles"), Profile)}
    soft = profiles["user_a"].soft_prompt
    text = tiny.generate([soft], [QUERIES[0]["instruction"]], max_new_tokens=6)[0]
    assert rows["q1"]["prediction"] == text
    ppl = float(tiny.perplexity([soft], [QUERIES[0]["instruction"]], [QUERIES[0]["reference"]])[0])
    assert rows["q1"]["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert rows["q4"]["perplexity"] is None and rows["q4"]["reference"] is None
    # The unknown user is scored without a soft prompt.
    ppl_none = float(tiny.perplexity([None], [QUERIES[4]["instruction"]], [QUERIES[4]["reference"]])[0])
    assert rows["q5"]["perplexity"] == pytest.approx(ppl_none, rel=1e-4)


def test_bad_rows_dead_lettered_and_reconciled(generated):
    out = generated["out"]
    letters = table_rows(out / "dead_letters")
    stages = sorted(d["stage"] for d in letters)
    assert stages == ["duplicate", "parse", "validate", "validate"]
    assert any("instruction" in d["reason"] for d in letters)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["queries_read"] == 9 and summary["predictions"] == 5
    assert summary["queries_dead_lettered"] == 3 and summary["query_duplicates"] == 1
    assert summary["predictions_not_personalized"] == 1 and summary["reconciled"] is True
    # The bundled task prompt lives in the default backbone's embedding space, not the tiny model's: the
    # unknown user is answered without a soft prompt, and the summary says none had the task prompt.
    assert summary["predictions_task_prompt"] == 0 and summary["settings"]["task_prompt"] is None


def test_predictions_are_a_delta_table_with_their_metadata(generated):
    from deltalake import DeltaTable
    table = DeltaTable(str(generated["out"] / "predictions"))
    assert {r["query_id"]: r for r in table.to_pyarrow_table().to_pylist()} == _predictions(generated["out"])
    meta = pq.read_schema(table.file_uris()[0]).metadata
    assert b"fingerprint" in meta[b"commer"]
    # The dtype the answers were computed in (auto resolved on the local runner: float32 on a CPU).
    assert json.loads(meta[b"commer"])["dtype"] == "float32"


def test_remote_workers_get_auto_and_local_ones_the_resolved_dtype(tiny_checkpoint, commer_cache):
    import argparse
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipelines.inference import generation_settings
    opts = argparse.Namespace(checkpoint=tiny_checkpoint, backbone=None, dtype="auto", device="cpu",
                              cache_dir=commer_cache, mode="none", num_documents=4, max_prompt_tokens=0,
                              max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0, seed=0, batch_size=4,
                              task_prompt="none")
    assert generation_settings(opts, PipelineOptions(["--runner", "DirectRunner"])).dtype == "float32"
    assert generation_settings(opts, PipelineOptions(["--runner", "DataflowRunner"])).dtype == "auto"
    opts.dtype = "bfloat16"
    assert generation_settings(opts, PipelineOptions(["--runner", "DataflowRunner"])).dtype == "bfloat16"

def test_fingerprint_mismatch_refused_before_running(tiny, tiny_checkpoint, commer_cache, tmp_path, capsys):
    from pipelines import generate
    profiles = write_profiles(tiny, tmp_path / "other", fingerprint="0123456789abcdef0123456789abcdef")
    queries = write_queries(tmp_path / "q.jsonl")
    argv = RUNNER + [f"--profiles={profiles}", f"--queries={queries}", f"--output={tmp_path / 'out'}",
                     f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "0123456789abcdef0123456789abcdef" in err and tiny.fingerprint() in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_user_without_profile_gets_the_task_prompt(tiny, generated, tiny_checkpoint, commer_cache, tmp_path,
                                                     capsys):
    """Issue 23 item 4: cold start. The task prompt answers the unknown user (not personalized, counted);
    users with a profile are untouched; a task prompt of another backbone is one line before anything runs."""
    import torch
    from commer.task_prompt import save_task_prompt
    from pipelines import generate
    task = torch.randn(3, tiny.hidden_size) * 0.05
    save_task_prompt(tmp_path / "task", task, "tiny", tiny.identity.content_hash)
    argv = RUNNER + [f"--profiles={generated['profiles']}", f"--queries={generated['queries']}",
                     f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}", "--max_new_tokens=6",
                     "--batch_size=2"]
    assert generate.main(argv + [f"--output={tmp_path / 'out'}", f"--task_prompt={tmp_path / 'task'}"]) == 0
    assert "1 of them with the task prompt" in capsys.readouterr().out
    rows, before = _predictions(tmp_path / "out"), _predictions(generated["out"])
    q5 = QUERIES[4]
    assert rows["q5"]["personalized"] is False and rows["q5"]["doc_count"] == 0
    assert rows["q5"]["prediction"] == tiny.generate([task], [q5["instruction"]], max_new_tokens=6)[0]
    ppl = float(tiny.perplexity([task], [q5["instruction"]], [q5["reference"]])[0])
    assert rows["q5"]["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert rows["q5"]["prompt_tokens"] == 3 + len(tiny.prompt_ids(q5["instruction"]))
    assert all(rows[q]["prediction"] == before[q]["prediction"] for q in ("q1", "q2", "q3", "q4"))
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["predictions_task_prompt"] == 1 and summary["predictions_not_personalized"] == 1

    save_task_prompt(tmp_path / "alien", task, "other", "f" * 64)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, argv + [f"--output={tmp_path / 'o2'}", f"--task_prompt={tmp_path / 'alien'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--task_prompt" in err and "backbone" in err
    assert "Traceback" not in err and not (tmp_path / "o2").exists()
    assert err.strip().splitlines()[-1].count("backbone") >= 1  # the error is one line, the last


def test_the_default_checkpoint_answers_a_cold_start_with_the_bundled_task_prompt():
    # Since session 9 the default reads its own task prompt before every profile (issue 23); alone, the bundled
    # one scored better on validation authors (55.02 vs 57.23), so a user without a profile gets the bundled one.
    from commer.checkpoint import read_config
    from commer.defaults import BUNDLED_TASK_PROMPT, default_checkpoint
    from pipelines.inference import CHECKPOINT_TASK_PROMPT, cold_start_folder
    config = read_config(default_checkpoint())
    assert config.task_prompt_tokens > 0
    assert cold_start_folder("default", config) == str(BUNDLED_TASK_PROMPT)
    assert cold_start_folder(CHECKPOINT_TASK_PROMPT, config) == CHECKPOINT_TASK_PROMPT
    assert cold_start_folder("none", config) is None


def test_missing_flags_are_clear(tiny_checkpoint, tmp_path, capsys):
    from pipelines import generate
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, RUNNER + [f"--queries={tmp_path}/q.jsonl", f"--output={tmp_path}/o",
                                         f"--checkpoint={tiny_checkpoint}"])
    assert exit_info.value.code == 2
    assert "--profiles" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(generate.main, RUNNER + [f"--queries={tmp_path}/missing.jsonl", f"--output={tmp_path}/o",
                                         f"--checkpoint={tiny_checkpoint}", "--mode=none"])
    assert "--queries" in capsys.readouterr().err


def test_in_prompt_uses_more_prompt_tokens_than_commer(generated, tiny_checkpoint, commer_cache, tmp_path):
    from pipelines import generate
    documents = write_documents(tmp_path / "docs.jsonl")
    out = tmp_path / "in_prompt"
    code = generate.main(RUNNER + [f"--queries={generated['queries']}", f"--documents={documents}",
                                   f"--output={out}", "--mode=in_prompt", "--num_documents=2",
                                   f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}",
                                   "--max_new_tokens=4"])
    assert code == 0
    baseline, commer = _predictions(out), _predictions(generated["out"])
    assert sorted(baseline) == sorted(commer)
    for q in ("q1", "q2", "q3", "q4"):
        assert baseline[q]["personalized"] and baseline[q]["doc_count"] == 2
        assert baseline[q]["prompt_tokens"] > commer[q]["prompt_tokens"]
    assert baseline["q5"]["personalized"] is False


def _user_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line).get("user_id"), str)
    except (ValueError, AttributeError):
        return False


def test_sample_queries_are_all_valid():
    """The README's sample queries parse cleanly (one user on purpose has no documents)."""
    from pathlib import Path

    from schemas import DeadLetter, Query
    from schemas.validation import parse_record
    path = Path(__file__).resolve().parents[2] / "pipelines" / "sample_data" / "queries.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [parse_record(line, Query, str(path)) for line in lines]
    assert all(not isinstance(q, DeadLetter) for q in parsed)
    users = {q.user_id for q in parsed}
    # every query user but one has documents in the sample corpus, so the README flow personalizes
    corpus_users = {json.loads(line)["user_id"] for f in path.parent.glob("documents-*.jsonl")
                    for line in f.read_text(errors="replace").splitlines() if _user_line(line)}
    assert users - corpus_users == {"user_without_documents"} and len(users) >= 6
    assert len({q.query_id for q in parsed}) == len(lines)


@pytest.mark.parametrize("module", ["pipelines.generate", "pipelines.evaluate"])
def test_help_lists_the_job_flags(module, capsys):
    import importlib
    job = importlib.import_module(module)
    assert job.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--output" in text and ("--queries" in text if module.endswith("generate") else "--references" in text)


def test_job_flags_keep_their_own_defaults_when_all_jobs_are_loaded():
    """Each job parses its own flags (parse_known_args) and hands the rest to Beam: no shared parser, no clash."""
    from pipelines import compress_users, evaluate, generate
    from pipelines.options import parse
    flags, options = parse(generate.parser, ["--output=x", "--runner=DirectRunner", "--direct_num_workers=2"])
    assert flags.batch_size == 16 and flags.output == "x"
    assert options.get_all_options()["direct_num_workers"] == 2 and options.get_all_options()["runner"] == "DirectRunner"
    assert parse(evaluate.parser, ["--output=x", "--direct_num_workers=3"])[0].output == "x"
    with pytest.raises(CliError, match="--batch_size is not a flag of python -m pipelines.evaluate"):
        parse(evaluate.parser, ["--output=x", "--batch_size=3"])  # generate's flag, not evaluate's: refused
    assert parse(compress_users.parser, [])[0].output is None  # required: no silent default folder
    assert parse(compress_users.parser, ["--batch_size=3"])[0].batch_size == 3
    assert parse(generate.parser, [])[0].output is None
    # One dead-letter flag name; the old one is a hidden alias.
    assert parse(generate.parser, ["--dead_letters=d"])[0].dead_letter_output == "d"
    assert parse(evaluate.parser, ["--dead_letter_output=d"])[0].dead_letter_output == "d"


def test_a_table_that_is_not_profiles_is_refused(tmp_path, tiny_checkpoint, commer_cache, capsys):
    from pipelines import generate
    from schemas import Prediction
    folder = tmp_path / "not_profiles"
    folder.mkdir()
    write_parquet([Prediction(user_id="u", query_id="q", prediction="p", personalized=False,
                              model_fingerprint="fp")], str(folder / "x.parquet"), arrow_schema(Prediction))
    queries = write_queries(tmp_path / "q.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, RUNNER + [f"--profiles={folder}", f"--queries={queries}",
                                         f"--output={tmp_path}/o", f"--checkpoint={tiny_checkpoint}",
                                         f"--cache_dir={commer_cache}"])
    assert exit_info.value.code == 2
    assert "not a profiles table" in capsys.readouterr().err


def test_rerun_into_the_same_output_adds_a_version(tiny, tiny_checkpoint, commer_cache, tmp_path):
    """A rerun commits a new version of the predictions table; it deletes nothing (old files go by vacuum), and
    what else the folder holds is left alone."""
    from pipelines import generate
    profiles = write_profiles(tiny, tmp_path / "commer_output")
    queries = write_queries(tmp_path / "queries.jsonl", BAD_LINES)
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "notes.txt").write_text("a user's own file")
    flags = RUNNER + [f"--profiles={profiles}", f"--queries={queries}", f"--output={out}", "--max_new_tokens=2",
                      f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}"]
    for _ in range(2):
        assert generate.main(flags) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["predictions", "dead_letters", "notes.txt",
                                                            "run_summary.json"])
    assert versions(out / "predictions") == versions(out / "dead_letters") == [0, 1]
    assert len(table_rows(out / "predictions")) == len(QUERIES)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["committed"] == {"dead letters": 1, "predictions": 1}


def test_a_checkpoint_with_its_own_task_prompt_answers_a_new_user(generated, tiny_checkpoint, commer_cache, tmp_path,
                                                                  capsys):
    """A checkpoint that reads its own task prompt before every profile: a user without one is answered by a
    task-prompt folder read alone (not after the own one), or -- when none fits, or with --task_prompt=checkpoint
    -- by the own task prompt alone (not twice); a checkpoint without one refuses 'checkpoint' in one line."""
    import torch
    from commer.task_prompt import save_task_prompt
    from pipelines import generate
    own = ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)
    tp = torch.randn(2, own.hidden_size) * 0.05
    own.attach_task_prompt(tp)
    own.save_pretrained(str(tmp_path / "ckpt"))
    task = torch.randn(3, own.hidden_size) * 0.05
    save_task_prompt(tmp_path / "task", task, "tiny", own.identity.content_hash)
    profiles = write_profiles(own, tmp_path / "profiles")
    argv = RUNNER + [f"--profiles={profiles}", f"--queries={generated['queries']}", f"--checkpoint={tmp_path / 'ckpt'}",
                     f"--cache_dir={commer_cache}", "--max_new_tokens=6", "--batch_size=2"]
    q5, q1 = QUERIES[4], QUERIES[0]
    # The bundled task prompt does not fit the tiny backbone: 'default' falls back to the own one.
    for flag, prompt, P in (("default", tp, 2), ("checkpoint", tp, 2), (str(tmp_path / "task"), task, 3)):
        out = tmp_path / f"out-{P}-{flag == 'checkpoint'}"
        assert generate.main(argv + [f"--output={out}", f"--task_prompt={flag}"]) == 0
        rows = _predictions(out)
        assert rows["q5"]["personalized"] is False and rows["q5"]["doc_count"] == 0
        alone = own.answer_nll([prompt], [q5["instruction"]], [q5["reference"]], task_prompt=False)
        assert rows["q5"]["perplexity"] == pytest.approx(math.exp(float(alone[0][0] / alone[1][0])), rel=1e-4)
        assert rows["q5"]["prediction"] == own.generate([prompt], [q5["instruction"]], max_new_tokens=6,
                                                        task_prompt=False)[0]
        assert rows["q5"]["prompt_tokens"] == P + len(own.prompt_ids(q5["instruction"]))
        assert rows["q1"]["personalized"] is True and rows["q1"]["prompt_tokens"] == 2 + own.K + len(
            own.prompt_ids(q1["instruction"]))
        assert json.loads((out / "run_summary.json").read_text())["predictions_task_prompt"] == 1
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, RUNNER + [f"--profiles={generated['profiles']}", f"--queries={generated['queries']}",
                                         f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}",
                                         f"--output={tmp_path / 'o2'}", "--task_prompt=checkpoint"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("error: --task_prompt=checkpoint") and "own" in last
