"""Golden tests: the project's forward equals the plain model's, and a recorded number holds.

Any drift in loading, chat templates, special tokens, masks or positions -- a dependency
upgrade included -- fails here first (DESIGN.md invariant 8). Integration: the real backbone.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from commer import ComMer
from commer.backbone import default_gguf_path
from commer.defaults import default_checkpoint

pytestmark = pytest.mark.integration

SENTENCE = "The city council approved the new budget on Tuesday, after a long debate about parks."
# 16 fixed (instruction, reference) pairs, written for this test.
EXAMPLES = [
    ("Generate a headline for the following article: The mayor opened a new public library downtown.",
     "Mayor Opens New Downtown Library"),
    ("Generate a headline for the following article: Heavy rain flooded several streets overnight.",
     "Overnight Rain Floods City Streets"),
    ("Generate a headline for the following article: A local bakery won a national award for its bread.",
     "Local Bakery Wins National Bread Award"),
    ("Generate a headline for the following article: Scientists found a new species of frog in the forest.",
     "New Frog Species Discovered In Forest"),
    ("Generate a headline for the following article: The team lost the final after extra time.",
     "Team Loses Final In Extra Time"),
    ("Generate a headline for the following article: Gas prices fell for the third week in a row.",
     "Gas Prices Drop For Third Straight Week"),
    ("Generate a headline for the following article: A famous singer announced a world tour.",
     "Singer Announces World Tour"),
    ("Generate a headline for the following article: The school board voted to start classes later.",
     "School Board Votes For Later Start Times"),
    ("What does document 1 contain?", "Document 1 describes a quiet village by the sea."),
    ("Summarize: the museum will stay open late on Fridays this summer.", "Museum Extends Friday Hours"),
    ("Write a short title for a story about a dog that rescued a hiker.", "Dog Rescues Lost Hiker"),
    ("Generate a headline for the following article: Researchers say sleep helps memory.",
     "Study: Sleep Boosts Memory"),
    ("Generate a headline for the following article: The airline cancelled hundreds of flights.",
     "Airline Cancels Hundreds Of Flights"),
    ("Generate a headline for the following article: A new bridge will connect the two towns.",
     "New Bridge To Link Two Towns"),
    ("Generate a headline for the following article: Voters will decide on the tax measure in May.",
     "Tax Measure Heads To Voters In May"),
    ("Generate a headline for the following article: The zoo welcomed twin panda cubs.",
     "Zoo Welcomes Twin Panda Cubs"),
]
# Token-level perplexity of EXAMPLES with no soft prompt (recorded with the pinned stack on
# 2026-11-27; an intended change of layout or pins must update it deliberately).
RECORDED_NO_PERSONALIZATION_PPL = 13.671097198819572


@pytest.fixture(scope="module")
def project_model() -> ComMer:
    return ComMer.from_pretrained(default_checkpoint())


@pytest.fixture(scope="module")
def plain_model():
    gguf = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval()


@torch.inference_mode()
def test_loaded_backbone_logits_equal_a_direct_gguf_load(project_model, plain_model):
    ids = torch.tensor([project_model.tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]])
    with project_model.lm.disable_adapter():
        ours = project_model.lm(input_ids=ids).logits
    theirs = plain_model(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


@torch.inference_mode()
def test_answer_nll_equals_cross_entropy_from_the_plain_model(project_model, plain_model):
    instruction, answer = EXAMPLES[0]
    nll, count = project_model.answer_nll([None], [instruction], [answer])
    prompt, target = project_model.prompt_ids(instruction), project_model.answer_ids(answer)
    ids = torch.tensor([prompt + target])
    logits = plain_model(input_ids=ids).logits[0, len(prompt) - 1: -1]
    by_hand = F.cross_entropy(logits.float(), torch.tensor(target), reduction="sum")
    assert int(count[0]) == len(target)
    assert math.isclose(float(nll[0]), float(by_hand), rel_tol=1e-5)


@torch.inference_mode()
def test_no_personalization_perplexity_matches_the_recorded_value(project_model):
    instructions, answers = zip(*EXAMPLES)
    nll, count = project_model.answer_nll([None] * len(EXAMPLES), list(instructions), list(answers))
    ppl = math.exp(float(nll.sum()) / float(count.sum()))
    assert math.isclose(ppl, RECORDED_NO_PERSONALIZATION_PPL, rel_tol=1e-3), ppl


def test_default_backbone_special_tokens(project_model):
    tok = project_model.tokenizer
    assert project_model.end_of_answer_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert project_model.answer_ids("City Council Approves")[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert project_model.bos_id is None  # SmolLM2's tokenizer adds no BOS; its template opens turns
