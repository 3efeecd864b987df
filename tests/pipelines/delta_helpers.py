"""What tests read from the jobs' Delta tables, the way any Delta reader would (no CURRENT, no run folders)."""
from deltalake import DeltaTable

from pipelines.io import input_table


def rows(table: str) -> list[dict]:
    """The current version's rows of a Delta table folder."""
    return DeltaTable(str(table)).to_pyarrow_table().to_pylist()


def files(path, flag: str = "--profiles", preferred: str = "profiles") -> list[str]:
    """The files the jobs read for PATH[@VERSION] (a table, or a job's --output)."""
    return input_table(str(path), flag, preferred).files


def versions(table) -> list[int]:
    return sorted(h["version"] for h in DeltaTable(str(table)).history())
