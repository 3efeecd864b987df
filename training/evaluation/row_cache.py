"""Scored rows kept on disk, so a killed or extended evaluation goes on with --resume.

A row is reused only when everything it was scored with is the same: the run's settings (data,
examples, ...), the weights it read and the generator settings, and -- when it needs ROUGE --
decoding. Weights are named by their fingerprint, never by their folder: a checkpoint copied or
moved keeps its rows, a changed one re-scores them. A row that never reads the ComMer
checkpoint's trained weights (no personalization, documents as text, prompt tuning) is keyed on
the backbone instead, so a new checkpoint on the same backbone reuses it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from commer.checkpoint import read_config
from commer.task_prompt import CONFIG_FILE as TASK_PROMPT_CONFIG
from training import prompt_tuning
from training.evaluation.reports import public


def folder_fingerprint(path: str) -> str:
    """The fingerprint of a ComMer checkpoint or a prompt-tuning folder, read without loading a model;
    the resolved folder for an old checkpoint that recorded none."""
    if (Path(path) / TASK_PROMPT_CONFIG).exists():
        return prompt_tuning.folder_fingerprint(path)
    return read_config(path).fingerprint or str(Path(path).resolve())


class RowCache:
    """`run`: the run's settings; `checkpoint`: the run's checkpoint (fingerprint, generator settings);
    `backbone`: what checkpoint-free rows depend on (backbone hash, generator settings)."""

    def __init__(self, folder: Path, run: dict, checkpoint: dict, backbone: dict):
        self.folder, self.run, self.checkpoint, self.backbone = folder, run, checkpoint, backbone

    def _expected(self, model: str | None, checkpoint_free: bool) -> dict:
        return {**self.run, "weights": self.backbone if checkpoint_free else self.checkpoint, "model": model}

    def _path(self, label: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + ".json")

    def get(self, label: str, model: str | None = None, decoded: bool = False,
            checkpoint_free: bool = False) -> dict | None:
        """`model`: the fingerprint of the model a row scores with when it is not the run's checkpoint
        (prompt tuning, Figure 6), so adding or changing it re-scores only its own rows. `decoded`:
        the row needs ROUGE; a saved row with ROUGE also serves a row that does not."""
        path = self._path(label)
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        signature = dict(saved.get("signature", {}))
        saved_decoded = not signature.pop("no_generate", True)
        if signature != self._expected(model, checkpoint_free) or (decoded and not saved_decoded):
            return None
        row = saved["row"]
        for key, values in saved["arrays"].items():
            row[key] = np.asarray(values, float)
        return row

    def put(self, row: dict, model: str | None = None, checkpoint_free: bool = False) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.tolist() for k, v in row.items() if k.startswith("_")}
        tmp = self._path(row["label"]).with_suffix(".tmp")
        signature = {**self._expected(model, checkpoint_free), "no_generate": "rougeL" not in row}
        tmp.write_text(json.dumps({"signature": signature, "row": public(row), "arrays": arrays}))
        os.replace(tmp, self._path(row["label"]))
