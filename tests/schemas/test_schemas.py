"""Every record type survives a Parquet round trip; tensors keep their K×d shape."""
import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from schemas import (DeadLetter, Document, DocumentCompression, Prediction, Profile, Query, arrow_schema, from_table,
                     read_metadata, read_parquet, tensor_column, write_parquet)

K, D = 3, 5
rng = np.random.default_rng(0)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

SAMPLES = {
    Document: Document(user_id="u1", doc_id="d1", text="hello", created_at=NOW),
    Profile: Profile(user_id="u1", doc_count=2, soft_prompt=rng.normal(size=(K, D)),
                     soft_prompt_sum=rng.normal(size=(K, D)), doc_ids=["d1", "d2"], model_fingerprint="abc",
                     updated_at=NOW),
    DocumentCompression: DocumentCompression(user_id="u1", doc_id="d1", compression=rng.normal(size=(K, D)),
                                             model_fingerprint="abc"),
    Query: Query(user_id="u1", query_id="q1", instruction="Write a headline", reference=None),
    Prediction: Prediction(user_id="u1", query_id="q1", prediction="A headline", personalized=True, doc_count=2,
                           reference="Ref", perplexity=3.5, prompt_tokens=12, model_fingerprint="abc"),
    DeadLetter: DeadLetter(stage="parse", reason="malformed JSON", source="f.jsonl", record="{oops"),
}


@pytest.mark.parametrize("record_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_parquet_round_trip(record_type, tmp_path):
    sample = SAMPLES[record_type]
    has_tensor = record_type in (Profile, DocumentCompression)
    schema = arrow_schema(record_type, (K, D) if has_tensor else None, {"fingerprint": "abc"})
    path = str(tmp_path / "x.parquet")
    write_parquet([sample, sample], path, schema)
    table = read_parquet(path)
    assert table.schema.equals(schema, check_metadata=False)
    assert read_metadata(table)["record"] == record_type.__name__
    back = from_table(table, record_type)
    assert len(back) == 2
    for name in record_type.model_fields:
        a, b = getattr(back[0], name), getattr(sample, name)
        if isinstance(b, np.ndarray):
            assert a.shape == (K, D) and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, name


def test_soft_prompt_shape_without_guessing(tmp_path):
    schema = arrow_schema(Profile, (K, D), {"fingerprint": "abc"})
    path = str(tmp_path / "p.parquet")
    write_parquet([SAMPLES[Profile]], path, schema)
    # A plain list of K·d floats (Delta has no fixed-size list); the column's metadata carries the shape.
    field = pq.read_table(path).schema.field("soft_prompt")
    assert pa.types.is_list(field.type) and json.loads(field.metadata[b"commer.shape"]) == [K, D]
    assert tensor_column(pq.read_table(path), "soft_prompt").shape == (1, K, D)
    assert tensor_column(pq.read_table(path).replace_schema_metadata(None), "soft_prompt").shape == (1, K, D)
    # pandas: flattened rows, and the shape in df.attrs
    df = pd.read_parquet(path)
    shape = tuple(df.attrs["tensor_shape"])
    np.testing.assert_array_equal(np.asarray(df.soft_prompt[0]).reshape(shape), SAMPLES[Profile].soft_prompt)
    assert df.attrs["commer"]["K"] == K and df.attrs["commer"]["d"] == D


def test_folder_of_shards_and_remote_path():
    schema = arrow_schema(Query)
    write_parquet([SAMPLES[Query]], "memory://t/q/part-0.parquet", schema)
    write_parquet([SAMPLES[Query]] * 2, "memory://t/q/part-1.parquet", schema)
    assert read_parquet("memory://t/q").num_rows == 3


@pytest.mark.parametrize("bad", [
    dict(user_id="", doc_id="d", text="x"),
    dict(user_id="u", doc_id="d", text="   \n"),
    dict(user_id="u", text="x"),
    dict(user_id=5, doc_id="d", text="x"),
])
def test_document_validation(bad):
    with pytest.raises(ValidationError):
        Document.model_validate(bad)


def test_fixed_shape_tensor_files_of_the_layout_before_delta_still_read(tmp_path):
    sample = SAMPLES[Profile]
    old = pa.table({"soft_prompt": pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack([sample.soft_prompt] * 2))})
    assert tensor_column(old, "soft_prompt").shape == (2, K, D)


def test_a_tensor_column_of_the_wrong_length_is_refused():
    table = pa.table({"soft_prompt": pa.array([[1.0] * (K * D - 1)], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="K·d"):
        tensor_column(table, "soft_prompt", (K, D))


def test_tensor_record_needs_shape():
    with pytest.raises(ValueError, match="shape"):
        arrow_schema(Profile)
