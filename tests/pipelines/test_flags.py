"""Every job's command line (issue 26): a flag neither the job nor Beam knows is a one-line error naming
the closest flag; required flags are marked; `--help` answers before Beam, torch and the model are imported."""
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import compress_users, evaluate, generate, vacuum
from pipelines.options import parse
from pipelines.runtime import CliError, run_cli

ROOT = Path(__file__).resolve().parents[2]
JOBS = {"compress_users": compress_users, "generate": generate, "evaluate": evaluate}


@pytest.mark.parametrize("job, argv, wrong, closest", [
    (compress_users, ["--output", "o", "--max_batch_token", "512"], "--max_batch_token", "--max_batch_tokens"),
    (compress_users, ["--output", "o", "--previous_profile=p"], "--previous_profile", "--previous_profiles"),
    (generate, ["--queries", "q", "--output", "o", "--max_new_token", "8"], "--max_new_token", "--max_new_tokens"),
    (generate, ["--queries", "q", "--output", "o", "--top-m", "4"], "--top-m", "--top_m"),
    (evaluate, ["--prediction", "p", "--output", "o"], "--prediction", "--predictions"),
    (evaluate, ["--predictions", "p", "--output", "o", "--runer=DataflowRunner"], "--runer", "--runner"),  # Beam's
])
def test_an_unknown_flag_is_one_line_naming_the_closest(job, argv, wrong, closest, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(job.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err, err
    assert err.startswith(f"error: {wrong} is not a flag of python -m pipelines.") and f"did you mean {closest}?" in err


def test_beam_flags_and_the_job_flags_still_pass():
    flags, options = parse(compress_users.parser, ["--output=o", "--max_batch_tokens", "512", "--direct_num_workers=2",
                                                   "--runner=DirectRunner", "--dry_run=True"])
    assert flags.max_batch_tokens == 512 and options.get_all_options()["direct_num_workers"] == 2


@pytest.mark.parametrize("argv, text", [
    (["--output", "o", "stray"], "unexpected argument 'stray'"),
    (["--output", "o", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--output", "o", "--batch_size", "many"], "argument --batch_size: invalid int value: 'many'"),
])
def test_other_argument_errors_are_one_line_too(argv, text, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(compress_users.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and text in err, err


@pytest.mark.parametrize("name, required", [("compress_users", ["--output OUTPUT"]),
                                            ("generate", ["--queries QUERIES", "--output OUTPUT"]),
                                            ("evaluate", ["--predictions PREDICTIONS", "--output OUTPUT"])])
def test_required_flags_are_marked_and_usage_names_the_module(name, required, capsys):
    JOBS[name].parser.print_help()
    text = capsys.readouterr().out
    usage = text.splitlines()[0]
    assert usage == f"usage: python -m pipelines.{name} {' '.join(required)} [flags]"
    for flag in required:
        help_line = " ".join(text.split(f"  {flag.split()[0]} ", 1)[1].split())
        assert help_line.startswith(f"{flag.split()[1]} Required.") or help_line.startswith("Required."), help_line


@pytest.mark.parametrize("name", sorted(JOBS))
def test_help_imports_neither_beam_nor_torch(name):
    """The fast path: the parser is defined from pipelines.flags, and --help exits before the heavy imports."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", f"pipelines.{name}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: python -m pipelines.{name}")
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {"apache_beam", "torch", "transformers", "commer.model", "commer.backbone"} & imported


def readme_job_commands():
    """Every `python -m pipelines.JOB ...` command in the README's code blocks, as argv lists."""
    import re
    import shlex
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0] if " #" in line else line
            found = re.search(r"python3? -m pipelines\.(\w+)(.*)", line)
            if found and "..." not in line:
                argv = shlex.split(re.sub(r"\$\{?(\w+)\}?", r"\1", found.group(2)))
                yield found.group(1), argv


README_COMMANDS = list(readme_job_commands())


def test_the_readme_has_job_commands():
    assert {name for name, _ in README_COMMANDS} == {"compress_users", "generate", "evaluate", "vacuum"}


@pytest.mark.parametrize("name, argv", README_COMMANDS, ids=[" ".join([n, *a])[:60] for n, a in README_COMMANDS])
def test_every_readme_command_uses_known_flags(name, argv):
    """A README command with a flag the job and Beam do not know would fail (as it should) for the user."""
    if name == "vacuum":  # not a Beam job: its own parser, table folders as arguments
        assert vacuum.parser.parse_args(argv).tables
        return
    flags, _ = parse(JOBS[name].parser, argv, required=JOBS[name].parser.required_flags)
    assert flags.output
