"""PerLTQA (Du et al., 2024) in its published format, turned into the paper's QA task.

    memory JSON   {persona: {"profile": {field: value}, "social_relationship": {mem_id: {"Supporting
                   Characters", "Description", "Relationship"}}, "events": {mem_id: {"content",
                   "summary", ...}}, ...}}
    QA JSON       [{persona: {"profile": [qa, ...], "social_relationship": [{mem_id: [qa, ...]}],
                   "events": [{mem_id: [qa, ...]}]}}, ...]   with qa = {"Question", "Answer",
                   "Reference Memory", ...}; "Reference Memory" is a profile field name, or a
                   memory id list written as a string ("['4_0']").
Each persona's memories are its documents: a profile field as "{persona}'s {field}: {value}", a
relationship as "{name} ({relationship}): {description}", an event as its content. An example is
one question with a random subset of n of the persona's memories that contains the answer's
reference memory (order shuffled), seeded. Split by persona (sha256 of the name: 75% train,
10% val, 15% test); examples over 2,900 characters are excluded.
"""
from __future__ import annotations

import ast
import random

from training.tasks.base import DataError, Example, drop_long, read_json, require_keys, split_of

FRACTIONS = (0.75, 0.10, 0.15)
SECTIONS = ("profile", "social_relationship", "events")


def persona_memories(name: str, record: dict, path) -> dict[str, str]:
    """Memory id → text. Profile memories are keyed by their field name."""
    require_keys(record, SECTIONS, path, f"persona {name!r}")
    memories = {}
    for field, value in record["profile"].items():
        if field != "Protagonist" and str(value).strip():
            memories[field] = f"{name}'s {field}: {value}"
    for mem_id, rel in record["social_relationship"].items():
        require_keys(rel, ("Supporting Characters", "Description"), path, f"persona {name!r} relationship {mem_id}")
        kind = f" ({rel['Relationship']})" if rel.get("Relationship") else ""
        memories[mem_id] = f"{rel['Supporting Characters']}{kind}: {rel['Description']}"
    for mem_id, event in record["events"].items():
        require_keys(event, ("content",), path, f"persona {name!r} event {mem_id}")
        memories[mem_id] = event["content"]
    return memories


def reference_ids(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            return []
    return [text]


def persona_questions(name: str, record: dict, path) -> list[dict]:
    """Flat list of a persona's QA records."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: QA entry for persona {name!r} is not an object")
    out = []
    for section in SECTIONS:
        for entry in record.get(section, []):
            # profile: a list of QA; other sections: a list of {mem_id: [QA, ...]}.
            groups = [entry] if "Question" in entry else [q for qs in entry.values() for q in qs]
            for qa in groups:
                require_keys(qa, ("Question", "Answer", "Reference Memory"), path, f"a {section} question of {name!r}")
                out.append(qa)
    return out


def load(memory_path: str, qa_path: str, split: str, num_documents: int, seed: int = 0,
         fractions=FRACTIONS) -> list[Example]:
    memory = read_json(memory_path, "PerLTQA memory")
    if not isinstance(memory, dict):
        raise DataError(f"{memory_path}: PerLTQA memory file must be an object keyed by persona")
    qa = read_json(qa_path, "PerLTQA QA")
    if not isinstance(qa, list):
        raise DataError(f"{qa_path}: PerLTQA QA file must be a list of {{persona: questions}} objects")
    rng = random.Random(seed)
    examples = []
    for block in qa:
        if not isinstance(block, dict):
            raise DataError(f"{qa_path}: an entry of the QA list is not an object")
        for name, record in block.items():
            if split_of(name, fractions) != split:
                continue
            if name not in memory:
                raise DataError(f"{qa_path}: persona {name!r} has no memories in {memory_path}")
            memories = persona_memories(name, memory[name], memory_path)
            for k, q in enumerate(persona_questions(name, record, qa_path)):
                refs = [r for r in reference_ids(q["Reference Memory"]) if r in memories]
                if not refs:
                    continue  # the reference memory is not in the memory file: nothing to ground on
                others = [m for m in memories if m not in refs]
                chosen = refs[:num_documents] + rng.sample(others, min(len(others), max(0, num_documents - len(refs))))
                rng.shuffle(chosen)
                examples.append(Example(
                    documents=[memories[m] for m in chosen], instruction=q["Question"], answer=q["Answer"],
                    user_id=name, example_id=f"{name}#{k}", meta={"reference": refs},
                ))
    return drop_long(examples)
