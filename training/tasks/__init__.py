"""Task loaders: each builds `Example`s (documents, instruction, answer) for a split."""
from commer.prompting import bm25_top  # noqa: F401
from training.tasks.base import (  # noqa: F401
    AUTOENCODING, MAX_EXAMPLE_CHARS, DataError, Example, reads_task_prompt, split_of,
)
from training.tasks import lamp, news, perltqa, pretraining


def load_examples(config, split: str, limit: int | None = None) -> list[Example]:
    """Examples of `split` ('train' | 'val' | 'test') for a TrainConfig, capped at `limit` (seeded)."""
    import random

    if not config.data:
        raise DataError(f"task {config.task!r} needs a data file: pass --data PATH")
    if config.task == "pretrain":
        examples = pretraining.load(config.data, split, config.num_documents, config.seed,
                                    val_data=config.val_data or None, passes=config.pretrain_passes)
    elif config.task == "news":
        examples = news.load(config.data, split, config.num_documents, seed=config.seed, max_examples=limit,
                             max_examples_per_user=config.max_examples_per_user)
        if getattr(config, "contrast_weight", 0) and split == "train":
            # The user-contrast term scores each query with another training author's documents too.
            examples = news.with_other_author(examples, news.authors_of(config.data, split),
                                              config.num_documents, config.seed)
        return examples
    elif config.task in ("lamp4", "lamp7"):
        examples = lamp.load_split(config.task, config, split)
    elif config.task == "perltqa":
        if not config.data_outputs:
            raise DataError("task 'perltqa' needs the QA JSON: pass --data_outputs PATH")
        examples = perltqa.load(config.data[0], config.data_outputs, split, config.num_documents, seed=config.seed)
    else:
        raise DataError(f"unknown task {config.task!r}")
    if limit is not None and len(examples) > limit:
        examples = random.Random(config.seed).sample(examples, limit)
    return examples
