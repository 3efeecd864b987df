"""Gradients reach everything that must learn, and nothing that must stay frozen (issue 11).

Auto-encoding through the real training path (compress → merge → generator → answer loss):
after two optimizer steps every LoRA matrix of every targeted layer and every compression
embedding has moved, no backbone weight has, and the reconstruction loss went down.
"""
import torch

from commer import ComMer, ComMerConfig
from training.config import TrainConfig
from training.tasks.base import Example
from training.train import example_nll, param_groups

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DOCS = ["the quick brown fox jumps over the lazy dog", "she wrote about travel, coffee and football",
        "markets rallied as rates fell", "notes about gardening and tomatoes"]


def test_every_trainable_weight_learns_and_the_backbone_stays_frozen(tiny_backbone, commer_cache):
    model = ComMer.from_backbone(tiny_backbone, ComMerConfig(
        num_compression_tokens=4, lora={"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": TARGETS}),
        cache=commer_cache)
    config = TrainConfig(task="pretrain", data=["unused"], lr_lora=1e-2, lr_embeddings=1e-1)
    optimizer = torch.optim.AdamW(param_groups(model, config), weight_decay=0.0)
    examples = [Example(documents=[f"Document 1: {d}"], instruction="What does document 1 contain?", answer=d)
                for d in DOCS]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    model.train()
    for _ in range(12):
        optimizer.zero_grad()
        nll, count = example_nll(model, examples)
        loss = nll.sum() / count.sum()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))

    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * len(TARGETS) * 2  # A and B, every target, both layers of the tiny model
    assert lora <= moved, sorted(lora - moved)[:3]
    assert "compression_embeddings" in moved
    assert moved <= lora | {"compression_embeddings"}, sorted(moved - lora)[:3]
    assert losses[-1] < losses[0]


def test_both_kinds_answer_one_interface_and_the_loop_never_asks_which(tiny_model, tiny_backbone, commer_cache):
    import ast
    import inspect

    from training import train as train_mod
    from training.prompt_tuning import PromptTuning
    from training.trainable import Trainable

    prompt_tuning = PromptTuning.from_backbone(tiny_backbone, num_tokens=3, cache=commer_cache)
    config = TrainConfig(task="pretrain", data=["unused"], lr_lora=1e-3, lr_embeddings=1e-2, lr_prompt=3e-2)
    assert isinstance(tiny_model, Trainable) and isinstance(prompt_tuning, Trainable)
    assert [(g["name"], g["lr"]) for g in param_groups(tiny_model, config)] == \
        [("lora", 1e-3), ("compression_embeddings", 1e-2)]
    assert [(g["name"], g["lr"], len(g["params"])) for g in param_groups(prompt_tuning, config)] == \
        [("soft_prompt", 3e-2, 1)]
    # Only the builders (build_model, build_objective) choose by the configured method; nothing else
    # in train.py tests which kind of model it holds.
    tree = ast.parse(inspect.getsource(train_mod))
    inside = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("build_")
              for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        assert not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "hasattr"), ast.unparse(node)
        if isinstance(node, ast.Compare):
            assert "method" not in ast.unparse(node), ast.unparse(node)
