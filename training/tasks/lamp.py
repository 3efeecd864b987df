"""LaMP-4 (news headlines) and LaMP-7 (tweet paraphrasing) in LaMP's published file format.

    *_questions.json   [{"id": str, "input": str, "profile": [{"id", "text"[, "title"]}, ...]}, ...]
    *_outputs.json     {"task": "LaMP_4", "golds": [{"id": str, "output": str}, ...]}

Each question is one user (LaMP's user-based split). Its top-n profile items are chosen by BM25
(rank-bm25 BM25Okapi, whitespace tokens) as LaMP does:
    LaMP-7  query = the input after its first ':'          corpus = item text
    LaMP-4  query = the input after 'article:'             corpus = "title text"
Documents: LaMP-4 items as "Text: {text} Title: {title}" (the paper's appendix A.2), LaMP-7
items as their text. Instruction = the input; answer = the gold output. Examples over 2,900
characters are excluded.

Splits: `train` and `val` come from the training files (a user is held out for validation by a
hash of its id, 10%); `test` comes from separate files (LaMP's dev set, as the paper uses it)
when given, else from the training files by hash too.
"""
from __future__ import annotations

from commer.prompting import bm25_top
from training.tasks.base import DataError, Example, drop_long, read_json, require_keys, split_of

PROFILE_KEYS = {"lamp4": ("id", "title", "text"), "lamp7": ("id", "text")}
TASK_NAMES = {"lamp4": "LaMP_4", "lamp7": "LaMP_7"}


def query_of(task: str, text: str) -> str:
    if task == "lamp4":
        marker = "article:"
        at = text.find(marker)
        return text[at + len(marker):].strip() if at >= 0 else text.strip()
    at = text.find(":")
    return text[at + 1:].strip() if at >= 0 else text.strip()


def corpus_entry(task: str, item: dict) -> str:
    return f"{item['title']} {item['text']}" if task == "lamp4" else item["text"]


def document_of(task: str, item: dict) -> str:
    return f"Text: {item['text']} Title: {item['title']}" if task == "lamp4" else item["text"]


def read_golds(path: str) -> dict[str, str]:
    data = read_json(path, "LaMP outputs")
    if not isinstance(data, dict) or not isinstance(data.get("golds"), list):
        raise DataError(f"{path}: LaMP outputs file must be an object with a 'golds' list")
    golds = {}
    for i, gold in enumerate(data["golds"]):
        require_keys(gold, ("id", "output"), path, f"golds[{i}]")
        golds[str(gold["id"])] = gold["output"]
    return golds


def load_file(task: str, questions_path: str, outputs_path: str, num_documents: int) -> list[Example]:
    """All examples of one questions/outputs file pair."""
    if task not in PROFILE_KEYS:
        raise ValueError(f"unknown LaMP task {task!r}")
    questions = read_json(questions_path, "LaMP questions")
    if not isinstance(questions, list):
        raise DataError(f"{questions_path}: LaMP questions file must be a JSON list of questions")
    golds = read_golds(outputs_path)
    examples = []
    for i, q in enumerate(questions):
        require_keys(q, ("id", "input", "profile"), questions_path, f"question {i}")
        qid = str(q["id"])
        if qid not in golds:
            raise DataError(f"{outputs_path}: no gold output for question id {qid} of {questions_path}")
        if not isinstance(q["profile"], list):
            raise DataError(f"{questions_path}: question {qid} has a profile that is not a list")
        for j, item in enumerate(q["profile"]):
            require_keys(item, PROFILE_KEYS[task], questions_path, f"question {qid} profile item {j}")
        profile = q["profile"]
        top = bm25_top(query_of(task, q["input"]), [corpus_entry(task, p) for p in profile], num_documents)
        examples.append(Example(
            documents=[document_of(task, profile[j]) for j in top],
            instruction=q["input"], answer=golds[qid], user_id=qid, example_id=qid,
        ))
    return drop_long(examples)


def load(task: str, questions_path: str, outputs_path: str, split: str, num_documents: int,
         test_questions: str | None = None, test_outputs: str | None = None,
         fractions=(0.9, 0.1, 0.0)) -> list[Example]:
    if split == "test" and test_questions:
        if not test_outputs:
            raise DataError(f"{test_questions}: LaMP test questions given without their outputs file")
        return load_file(task, test_questions, test_outputs, num_documents)
    if split == "test":
        fractions = (0.8, 0.1, 0.1)
    return [e for e in load_file(task, questions_path, outputs_path, num_documents)
            if split_of(e.user_id, fractions) == split]


def load_split(task: str, config, split: str) -> list[Example]:
    """`load` driven by a TrainConfig: data/data_outputs = training files, val_data/val_outputs = dev."""
    if not config.data_outputs:
        raise DataError(f"task {task!r} needs the outputs JSON of {config.data[0]}: pass --data_outputs PATH")
    return load(task, config.data[0], config.data_outputs, split, config.num_documents,
                test_questions=config.val_data[0] if config.val_data else None, test_outputs=config.val_outputs)
