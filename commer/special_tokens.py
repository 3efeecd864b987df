"""Which special tokens a backbone expects, read from its tokenizer explicitly.

Two rules that change results and must not depend on what a library version happens to report
as `eos_token`:
- the end of an answer is the chat template's end-of-turn marker where the template has one
  (`<|im_end|>` for SmolLM2, `<end_of_turn>` for Gemma, `<|eot_id|>` for Llama 3), else eos;
- a BOS token starts every sequence when the tokenizer adds one by itself (Gemma, Llama),
  because such models are trained with it and degrade badly without it.
"""
from __future__ import annotations

# Rendered as an assistant turn to find what the template writes right after an answer.
_SENTINEL = "COMMERANSWERSENTINEL"


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items()
               if getattr(token, "special", False))
    return ids


def end_of_turn_id(tokenizer) -> int | None:
    """The first special token the chat template writes after an assistant answer, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except Exception:  # templates may refuse roles or raise on purpose; then there is no marker
        return None
    at = text.rfind(_SENTINEL)
    if at < 0:
        return None
    special = _special_ids(tokenizer)
    after = tokenizer(text[at + len(_SENTINEL):], add_special_tokens=False)["input_ids"]
    return next((i for i in after if i in special), None)


def end_of_answer_id(tokenizer, chat: bool) -> int:
    """The token that ends an answer: the template's end-of-turn marker in chat mode, else eos."""
    marker = end_of_turn_id(tokenizer) if chat else None
    if marker is not None:
        return marker
    if tokenizer.eos_token_id is None:
        raise ValueError("the backbone's tokenizer has no eos token and no chat end-of-turn marker: "
                         "an answer's end cannot be marked")
    return tokenizer.eos_token_id


_BOS_ATTR = "_commer_leading_bos"


def leading_bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer itself starts every encoding with it, else None.

    Asked once per tokenizer object and remembered on it: the compressor's tokenization rule
    calls this for every document batch (a hot path in the Tokenize step of the main job).
    """
    if hasattr(tokenizer, _BOS_ATTR):
        return getattr(tokenizer, _BOS_ATTR)
    bos = tokenizer.bos_token_id
    found = None
    if bos is not None:
        with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        found = bos if with_specials[:1] == [bos] and without[:1] != [bos] else None
    try:
        setattr(tokenizer, _BOS_ATTR, found)
    except AttributeError:  # a tokenizer that refuses attributes: ask again next time
        pass
    return found
