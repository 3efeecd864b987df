"""The checkpoint jobs use when none is named.

The package ships a trained checkpoint in commer/checkpoints/default/. If that folder is
absent (a development tree before training), a seeded untrained checkpoint on the default
backbone is created once in the cache and used instead; its config says trained=false, and
every job that uses it says so.

The default reads its own task prompt (config.task_prompt_tokens = 8) before every profile: the
bundled task prompt below, trained 100 more news steps with the profile (issue 23).

Beside it, commer/checkpoints/task_prompt/: the task prompt (prompt tuning without documents,
commer.task_prompt; 8 soft tokens, a 400-step news schedule at batch 8 whose best validation was
step 350) -- the comparison every profile must beat, and the soft prompt a user without a profile
gets. Read it alone with the default: `model.generate([task_prompt()], [x], task_prompt=False)`.
"""
from __future__ import annotations

from pathlib import Path

from commer.backbone import cache_dir, publish_atomically
from commer.checkpoint import CONFIG_FILE
from commer.config import ComMerConfig
from commer.model import ComMer
from commer.task_prompt import TaskPrompt, TaskPromptError, load_task_prompt

BUNDLED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"
BUNDLED_TASK_PROMPT = Path(__file__).parent / "checkpoints" / "task_prompt"
UNTRAINED_SEED = 0


def default_checkpoint(cache: str | None = None) -> str:
    """Path of the bundled trained checkpoint, or of the cached seeded untrained one."""
    if (BUNDLED_CHECKPOINT / CONFIG_FILE).exists():
        return str(BUNDLED_CHECKPOINT)
    return str(untrained_checkpoint(cache))


def untrained_checkpoint(cache: str | None = None, seed: int = UNTRAINED_SEED) -> Path:
    """A freshly initialised checkpoint on the default backbone, created once per cache."""
    target = cache_dir(cache) / "checkpoints" / f"untrained-default-seed{seed}"
    if not (target / CONFIG_FILE).exists():
        model = ComMer.from_backbone("default", ComMerConfig(seed=seed), cache=cache)
        publish_atomically(target, lambda tmp: model.save_pretrained(str(tmp)), CONFIG_FILE)
    return target


def default_task_prompt() -> TaskPrompt:
    """The bundled task prompt with its backbone identity (for jobs that check it against a model)."""
    if not (BUNDLED_TASK_PROMPT / "prompt_tuning.json").exists():
        raise TaskPromptError(f"{BUNDLED_TASK_PROMPT}: no task prompt is bundled in this tree")
    return load_task_prompt(BUNDLED_TASK_PROMPT)


def task_prompt():
    """The bundled task prompt's (K, d) soft prompt: usable wherever a profile's soft prompt is, with
    the default checkpoint's backbone, read alone -- e.g. `model.generate([task_prompt()], [instruction],
    task_prompt=False)` (without the flag, a checkpoint with its own task prompt reads that one first)."""
    return default_task_prompt().soft_prompt
