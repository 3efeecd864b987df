"""ComMer, top to bottom: compress each document, merge by mean, generate from the merge.

    document tokens ++ K compression embeddings ──► backbone + LoRA ──► last-layer states
                                                                        at the K positions
    mean over a user's documents ──► soft prompt (K×d)
    [soft prompt] ++ embed(prompt) ──► backbone, adapter disabled ──► answer

The backbone is frozen and shared: the compressor is the backbone with a LoRA adapter on,
the generator is the same backbone with the adapter off. Only the compression embeddings
and the LoRA weights train (kept in float32 even on a bfloat16 backbone).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from commer.backbone import BackboneIdentity, load_backbone
from commer.config import ComMerConfig
from commer.merge import mean_pool

SoftPrompt = torch.Tensor | np.ndarray | None


class ComMer(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, identity: BackboneIdentity, config: ComMerConfig):
        super().__init__()
        d = backbone.get_input_embeddings().weight.shape[1]
        self.config = config.model_copy(update={
            "backbone_name": identity.name, "backbone_hash": identity.content_hash, "hidden_size": d,
        })
        self.tokenizer = tokenizer
        self.identity = identity
        lora = self.config.lora
        # Initialisation is seeded without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.lm = get_peft_model(backbone, LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules), bias="none",
            ))
            # Start the compression embeddings at real token embeddings, so their scale
            # matches what the backbone expects as input.
            vocab = backbone.get_input_embeddings().weight
            rows = torch.randint(0, vocab.shape[0], (self.config.num_compression_tokens,))
            self.compression_embeddings = nn.Parameter(vocab[rows].detach().float().clone())
        self.eval()

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, backbone: str = "default", config: ComMerConfig | None = None,
                      dtype: str = "float32", cache: str | None = None) -> "ComMer":
        """A freshly initialised (untrained) ComMer on a backbone reference."""
        config = (config or ComMerConfig()).model_copy(update={"backbone": backbone})
        model, tokenizer, identity = load_backbone(backbone, dtype=dtype, cache=cache)
        return cls(model, tokenizer, identity, config)

    @classmethod
    def from_pretrained(cls, path: str, backbone: str | None = None, dtype: str = "float32",
                        cache: str | None = None) -> "ComMer":
        from commer.checkpoint import load_checkpoint
        return load_checkpoint(path, backbone=backbone, dtype=dtype, cache=cache)

    def save_pretrained(self, path: str) -> None:
        from commer.checkpoint import save_checkpoint
        save_checkpoint(self, path)

    def fingerprint(self) -> str:
        from commer.checkpoint import compute_fingerprint
        return compute_fingerprint(self)

    # ---- the pieces of the backbone we use ----------------------------------------------

    @property
    def K(self) -> int:
        return self.config.num_compression_tokens

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.compression_embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def embed(self) -> nn.Embedding:
        return self.lm.get_base_model().get_input_embeddings()

    @property
    def body(self) -> nn.Module:
        """The decoder stack without the LM head: we only need hidden states or a few logits."""
        return self.lm.get_base_model().base_model

    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_base_model().get_output_embeddings()

    # ---- compression --------------------------------------------------------------------

    def tokenize_documents(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids per document, cut to max_document_tokens, and which ones were cut."""
        return tokenize_documents(self.tokenizer, texts, self.config.max_document_tokens)

    def compress_token_ids(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, K, d) float32 compressions of tokenized documents; differentiable.

        Each row is laid out [document, K compression slots, padding]. Padding goes on the
        right, after the compression slots, so under the causal mask no real position ever
        sees a pad: a document gets the same compression in any batch as alone, and no
        attention mask is needed (which keeps SDPA on its fast causal path).
        """
        K = self.K
        lengths = torch.tensor([len(x) for x in batch], device=self.device)
        width = int(lengths.max()) + K
        ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, device=self.device)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)

        slot = torch.arange(width, device=self.device)[None, :] - lengths[:, None]
        is_slot = (slot >= 0) & (slot < K)
        embeds = self.embed(ids)
        compression = self.compression_embeddings.to(embeds.dtype)[slot.clamp(0, K - 1)]
        embeds = torch.where(is_slot[..., None], compression, embeds)

        hidden = self.body(inputs_embeds=embeds, use_cache=False).last_hidden_state
        at_slots = (lengths[:, None] + torch.arange(K, device=self.device)[None, :])
        out = hidden.gather(1, at_slots[..., None].expand(-1, -1, hidden.shape[-1]))
        return out.float()

    def compress_packed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, K, d) float32 compressions with the documents packed into one sequence, no padding
        (commer.packing); equal to compress_token_ids within float tolerance; differentiable."""
        from commer.packing import compress_packed
        return compress_packed(self, batch)

    @torch.inference_mode()
    def compress(self, texts: Sequence[str], batch_size: int = 32, max_batch_tokens: int | None = None,
                 packed: bool = False) -> torch.Tensor:
        """(N, K, d) compressions of raw texts, batched by length, in input order.

        Batches hold `batch_size` documents, or with `max_batch_tokens` up to that many
        positions (tokens + K per document; padded batches count their padding). `packed`
        concatenates each batch's documents into one sequence (needs max_batch_tokens).
        """
        from commer.packing import plan_batches
        ids, _ = self.tokenize_documents(texts)
        if packed and not max_batch_tokens:
            raise ValueError("packed=True needs max_batch_tokens (the length of one packed sequence)")
        if max_batch_tokens:
            batches = plan_batches([len(x) for x in ids], max_batch_tokens, self.K, padded=not packed)
        else:
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            batches = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
        step = self.compress_packed if packed else self.compress_token_ids
        out = torch.empty((len(ids), self.K, self.hidden_size))
        for chunk in batches:
            out[chunk] = step([ids[i] for i in chunk]).cpu()
        return out

    # ---- generator inputs ---------------------------------------------------------------

    @property
    def uses_chat_template(self) -> bool:
        return self.config.prompt_template == "chat" and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, instruction: str) -> list[int]:
        if self.uses_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
        else:
            template = self.config.prompt_template
            text = (template if "{instruction}" in template else "{instruction}\n").format(instruction=instruction)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        # Keep the end: the template's cue to answer must survive truncation.
        return ids[-self.config.max_prompt_tokens:]

    def answer_ids(self, answer: str) -> list[int]:
        # A chat turn starts on a fresh line; a plain "Answer:" cue is followed by a space.
        text = answer.strip() if self.uses_chat_template else " " + answer.strip()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[: self.config.max_answer_tokens] + [self.tokenizer.eos_token_id]

    def _generator_batch(self, soft_prompts: Sequence[SoftPrompt], token_rows: Sequence[list[int]]):
        """Left-padded rows [pad, soft prompt, tokens] → (embeds, attention mask, positions).

        Positions restart at 0 after the padding, so a row's result does not depend on how
        much padding its batch needed. A missing soft prompt (a user with no documents)
        simply contributes no positions.
        """
        rows = []
        for soft, tokens in zip(soft_prompts, token_rows):
            token_embeds = self.embed(torch.as_tensor(tokens, dtype=torch.long, device=self.device))
            if soft is not None:
                soft = torch.as_tensor(soft, device=self.device).to(token_embeds.dtype)
                token_embeds = torch.cat([soft, token_embeds], dim=0)
            rows.append(token_embeds)
        width = max(r.shape[0] for r in rows)
        embeds = torch.stack([F.pad(r, (0, 0, width - r.shape[0], 0)) for r in rows])
        mask = torch.stack([
            torch.arange(width, device=self.device) >= width - r.shape[0] for r in rows
        ]).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, positions

    # ---- training loss and perplexity ---------------------------------------------------

    def merge_documents(self, documents: Sequence[Sequence[str]]) -> list[torch.Tensor | None]:
        """One differentiable mean soft prompt per example (None for an example with no docs)."""
        flat = [doc for docs in documents for doc in docs]
        if not flat:
            return [None] * len(documents)
        group = torch.tensor([i for i, docs in enumerate(documents) for _ in docs], device=self.device)
        merged = mean_pool(self.compress_token_ids(self.tokenize_documents(flat)[0]), group, len(documents))
        return [merged[i] if len(docs) else None for i, docs in enumerate(documents)]

    def answer_nll(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                   answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example summed negative log-likelihood of the answer tokens, and their count.

        Only answer tokens are scored (the paper's loss). Logits are computed only at the
        positions that predict them, not over the whole sequence.
        """
        answer_rows = [self.answer_ids(a) for a in answers]
        token_rows = [self.prompt_ids(x) + a for x, a in zip(instructions, answer_rows)]
        embeds, mask, positions = self._generator_batch(soft_prompts, token_rows)
        with self.lm.disable_adapter():
            hidden = self.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        width = hidden.shape[1]
        nll, count = [], []
        for row, answer in enumerate(answer_rows):
            # Rows are left-padded, so every answer ends at the last position.
            predictors = hidden[row, width - len(answer) - 1: width - 1]
            logits = self.lm_head(predictors).float()
            target = torch.as_tensor(answer, device=self.device)
            nll.append(F.cross_entropy(logits, target, reduction="sum"))
            count.append(len(answer))
        return torch.stack(nll), torch.tensor(count, device=self.device, dtype=torch.float32)

    def loss(self, documents: Sequence[Sequence[str]], instructions: Sequence[str],
             answers: Sequence[str]) -> torch.Tensor:
        """Mean cross-entropy per answer token, end to end through compressor and merge."""
        nll, count = self.answer_nll(self.merge_documents(documents), instructions, answers)
        return nll.sum() / count.sum()

    @torch.inference_mode()
    def perplexity(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                   answers: Sequence[str]) -> torch.Tensor:
        """Per-example perplexity of a reference answer given a soft prompt."""
        nll, count = self.answer_nll(soft_prompts, instructions, answers)
        return torch.exp(nll / count).cpu()

    # ---- generation ---------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Answers from the frozen backbone (adapter off), greedy unless do_sample."""
        eos = self.tokenizer.eos_token_id
        embeds, mask, positions = self._generator_batch(soft_prompts, [self.prompt_ids(x) for x in instructions])
        rng = torch.Generator(device=self.device)
        rng.manual_seed(0 if seed is None else seed)
        batch = embeds.shape[0]
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        produced: list[torch.Tensor] = []
        with self.lm.disable_adapter():
            out = self.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
            for _ in range(max_new_tokens):
                logits = self.lm_head(out.last_hidden_state[:, -1]).float()
                token = _pick(logits, do_sample, temperature, top_p, rng)
                token = torch.where(done, torch.full_like(token, eos), token)
                produced.append(token)
                done |= token == eos
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                out = self.body(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                                cache=out.cache, use_cache=True)
        if not produced:
            return [""] * batch
        tokens = torch.stack(produced, dim=1).tolist()
        return [self.tokenizer.decode(_until(row, eos), skip_special_tokens=True).strip() for row in tokens]


def tokenize_documents(tokenizer, texts: Sequence[str], limit: int) -> tuple[list[list[int]], list[bool]]:
    """The compressor's tokenization rule (no special tokens, cut at `limit`), usable with the
    tokenizer alone, so tokenizing workers need not load the model."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [x[:limit] for x in ids], [len(x) > limit for x in ids]


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
          rng: torch.Generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


def _until(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
