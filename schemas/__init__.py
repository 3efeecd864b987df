"""Records shared by every ComMer job (pydantic) and their Arrow/Parquet form."""
from schemas.arrow import (arrow_schema, from_table, read_metadata, tensor_column, tensor_shape, to_row, to_table,
                           write_parquet)
from schemas.tables import read_parquet, read_table, table_version
from schemas.records import (SCHEMA_VERSION, DeadLetter, Document, DocumentCompression, Prediction, Profile,
                             Query, QueryScore, UserScore, utc_now)

__all__ = [
    "SCHEMA_VERSION", "DeadLetter", "Document", "DocumentCompression", "Prediction", "Profile", "Query", "QueryScore", "UserScore",
    "arrow_schema", "from_table", "read_metadata", "read_parquet", "read_table", "table_version", "tensor_column", "tensor_shape",
    "to_row", "to_table",
    "utc_now", "write_parquet",
]
