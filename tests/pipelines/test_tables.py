"""Issue 24: every output table is a Delta Lake table that pandas, polars and DuckDB read without ComMer's code,
one version per run, time travel by PATH@VERSION, refusals in one line, and vacuum as the only deleter."""
import json
import shutil

import numpy as np
import pytest
from deltalake import DeltaTable

from pipelines import compress_users, evaluate, generate, vacuum
from pipelines.runtime import CliError
from schemas import read_parquet, tensor_column
from schemas.tables import TableError

RUNNER = ["--direct_running_mode=in_memory"]
DOCS = [{"user_id": f"u{u}", "doc_id": f"d{d}", "text": f"user {u} writes about {d} " * (1 + d)}
        for u in range(3) for d in range(3)]
QUERIES = [{"user_id": f"u{u}", "query_id": "q1", "instruction": "Write a headline.", "reference": "A headline"}
           for u in range(3)]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_checkpoint, commer_cache):
    root = tmp_path_factory.mktemp("tables")
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOCS))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QUERIES))
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache]
    compress_users.run(["--input", str(root / "docs.jsonl"), "--output", str(root / "out"),
                        "--document_compressions_output", str(root / "dc"), *model, *RUNNER])
    assert generate.main(["--profiles", str(root / "out"), "--queries", str(root / "queries.jsonl"), "--output",
                          str(root / "gen"), "--max_new_tokens", "2", *model, *RUNNER]) == 0
    assert evaluate.main(["--predictions", str(root / "gen"), "--output", str(root / "ev"), "--no_plots", *RUNNER]) == 0
    return root


TABLES = {"out/profiles": ("soft_prompt", 3), "dc": ("compression", 9), "gen/predictions": (None, 3),
          "ev/per_query": (None, 3), "ev/per_user": (None, 3), "out/dead_letters": (None, 0),
          "gen/dead_letters": (None, 0), "ev/dead_letters": (None, 0)}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_pandas_polars_and_duckdb_read_every_table_without_our_code(outputs, name):
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    path, (tensor, rows) = str(outputs / name), TABLES[name]
    table = DeltaTable(path)
    df = table.to_pandas()
    assert len(df) == rows == polars.read_delta(path).height
    dataset = table.to_pyarrow_dataset()  # DuckDB offline: no extension, the dataset delta-rs gives
    assert duckdb.sql("select count(*) from dataset").fetchall()[0][0] == rows
    if tensor:  # the README's one-liners: (N, K, d) from each reader, K and d from the column's metadata
        K, d = json.loads(next(f for f in table.schema().fields if f.name == tensor).metadata["commer.shape"])
        ours = tensor_column(read_parquet(path), tensor)
        from_pandas = np.stack(df[tensor]).reshape(-1, K, d)
        from_polars = polars.read_delta(path)[tensor].list.to_array(K * d).to_numpy().reshape(-1, K, d)
        from_duckdb = np.stack(duckdb.sql(f"select {tensor} from dataset").fetchnumpy()[tensor]).reshape(-1, K, d)
        order = np.argsort(df["user_id"] + "/" + (df["doc_id"] if "doc_id" in df else ""))
        ours_order = np.argsort(np.array([r["user_id"] + "/" + r.get("doc_id", "") for r in
                                          read_parquet(path).drop_columns([tensor]).to_pylist()]))
        np.testing.assert_array_equal(from_pandas[order], ours[ours_order])
        np.testing.assert_array_equal(from_polars, from_pandas)
        np.testing.assert_array_equal(from_duckdb, from_pandas)
    commit = json.loads(table.history(1)[0]["commer"])
    assert commit["run_id"] and commit["table"]["record"]


def test_a_folder_of_several_tables_names_them_instead_of_mixing_them(outputs):
    assert read_parquet(str(outputs / "out")).num_rows == 3  # profiles; the dead letters are never "the" table
    (outputs / "mixed").mkdir()
    for name in ("out/profiles", "gen/predictions"):
        shutil.copytree(outputs / name, outputs / "mixed" / name.split("/")[1])
    with pytest.raises(TableError, match="several tables"):
        read_parquet(str(outputs / "mixed"))


def test_time_travel_and_versions_of_a_rerun(outputs, tiny_checkpoint, commer_cache):
    profiles = outputs / "out" / "profiles"
    before = read_parquet(str(profiles)).to_pylist()
    (outputs / "more.jsonl").write_text(json.dumps({"user_id": "u9", "doc_id": "x", "text": "late"}) + "\n")
    summary = compress_users.run(["--input", str(outputs / "more.jsonl"), "--output", str(outputs / "out"),
                                  "--previous_profiles", str(outputs / "out"), "--checkpoint", tiny_checkpoint,
                                  "--cache_dir", commer_cache, *RUNNER])
    assert summary["committed"]["profiles"] == 1 and read_parquet(str(profiles)).num_rows == 4
    assert read_parquet(f"{profiles}@0").to_pylist() == before
    when = DeltaTable(str(profiles)).history()[-1]["timestamp"]  # version 0's commit time, ms
    from datetime import datetime, timezone
    stamp = datetime.fromtimestamp(when / 1000 + 0.0005, timezone.utc).isoformat()
    assert read_parquet(f"{profiles}@{stamp}").num_rows == 3
    with pytest.raises(TableError, match="no such version"):
        read_parquet(f"{profiles}@7")
    # A refresh from an earlier version: --previous_profiles PATH@VERSION.
    again = compress_users.run(["--input", str(outputs / "more.jsonl"), "--output", str(outputs / "again"),
                                "--previous_profiles", f"{profiles}@0", "--checkpoint", tiny_checkpoint,
                                "--cache_dir", commer_cache, *RUNNER])
    assert again["documents_compressed"] == 1 and again["users"] == 4


def test_a_table_inside_another_or_of_another_record_is_refused(outputs, tiny_checkpoint, commer_cache):
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache, *RUNNER]
    with pytest.raises(CliError, match="inside"):
        compress_users.run(["--input", str(outputs / "docs.jsonl"), "--output", str(outputs / "o2"),
                            "--document_compressions_output", str(outputs / "o2" / "profiles" / "dc"), *model])
    with pytest.raises(CliError, match="Prediction records, not DocumentCompression"):
        compress_users.run(["--input", str(outputs / "docs.jsonl"), "--output", str(outputs / "o4"),
                            "--document_compressions_output", str(outputs / "gen" / "predictions"), *model])
    with pytest.raises(CliError, match="@VERSION"):
        compress_users.run(["--input", str(outputs / "docs.jsonl"), "--output", str(outputs / "o3"),
                            "--document_compressions_output", str(outputs / "dc") + "@0", *model])


def test_vacuum_lists_then_deletes_only_what_no_version_needs(outputs, capsys):
    table = outputs / "gen" / "predictions"
    stray = table / "20990101T000000-deadbeef" / "predictions-x.parquet"  # a killed run's file
    stray.parent.mkdir()
    stray.write_bytes(b"PAR1 partial")
    assert vacuum.main([str(table), "--retention_hours", "0"]) == 0
    assert "would delete (add --delete) 1 files" in capsys.readouterr().out and stray.exists()
    assert vacuum.main([str(table), "--retention_hours", "0", "--delete"]) == 0
    assert not stray.exists() and DeltaTable(str(table)).to_pandas().shape[0] == 3
    with pytest.raises(CliError, match="not a Delta table"):
        vacuum.vacuum(str(outputs / "gen"), 0, False)
