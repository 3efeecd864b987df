"""ComMer, top to bottom: compress each document, merge by mean, generate from the merge.

    document tokens ++ K compression embeddings ──► backbone + LoRA ──► last-layer states
                                                                        at the K positions
    mean over a user's documents ──► soft prompt (K×d)
    [task prompt?] ++ [soft prompt] ++ embed(prompt) ──► backbone, adapter disabled ──► answer

The backbone is frozen and shared: the compressor is the backbone with a LoRA adapter on,
the generator is the same backbone with the adapter off. Only the compression embeddings
and the LoRA weights train (kept in float32 even on a bfloat16 backbone).

A checkpoint may also carry its own task prompt (config.task_prompt_tokens = P > 0): P trained soft
tokens read before every profile, so the profile need only carry what is particular to its user
and the task's prior has its own room (a departure from the paper, whose generator reads the mean
alone; issue 23 measured that mean carrying mostly the task). It trains with the rest and is part
of the checkpoint's weights and fingerprint.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from torch import nn

from commer.backbone import BackboneIdentity, load_backbone
from commer.checkpoint import (
    CheckpointError, backbone_for, check_fingerprint, compute_fingerprint, read_config, read_weights,
    save_checkpoint,
)
from commer.config import ComMerConfig
from commer.merge import mean_pool
from commer.packing import compress_packed, plan_batches
from commer.special_tokens import end_of_answer_id, leading_bos_id

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
            with warnings.catch_warnings():
                # peft calls a transformers method deprecated in 5.x; not ours to fix, not the user's.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                self.lm = get_peft_model(backbone, LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules), bias="none",
                ))
            # Start the compression embeddings at real input embeddings as the backbone computes
            # them: through the embedding module, so a built-in multiplier (Gemma 3 scales by
            # sqrt(d)) is included and the new slots start at the scale real tokens have.
            embedding = backbone.get_input_embeddings()

            def token_embeddings(n: int) -> nn.Parameter:  # n random vocabulary rows, float32
                rows = torch.randint(0, embedding.weight.shape[0], (n,))
                with torch.no_grad():
                    return nn.Parameter(embedding(rows.to(embedding.weight.device)).detach().float().clone())

            self.compression_embeddings = token_embeddings(self.config.num_compression_tokens)
            # A fresh task prompt starts, as prompt tuning's does, at real token embeddings (drawn after the
            # compression embeddings', which stay as they were); from_pretrained then loads the trained one.
            P = self.config.task_prompt_tokens
            self.task_prompt = token_embeddings(P) if P else None
        # Special tokens, taken explicitly (see commer.special_tokens).
        self.bos_id = leading_bos_id(tokenizer)
        self.end_of_answer_id = end_of_answer_id(tokenizer, self.uses_chat_template)
        self.stop_ids = sorted({self.end_of_answer_id} | (
            {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
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
        """Rebuild a ComMer from a checkpoint folder; `backbone` overrides the recorded reference
        (it must be the same model: its identity is checked before any weight is loaded)."""
        config = read_config(path)
        folder, identity = backbone_for(path, config, backbone, cache)
        lm, tokenizer, _ = load_backbone(str(folder), dtype=dtype, cache=cache)
        model = cls(lm, tokenizer, identity, config)
        weights = read_weights(path, cache)
        if weights.compression_embeddings.shape != model.compression_embeddings.shape:
            raise CheckpointError(
                f"{path}: compression embeddings have shape {tuple(weights.compression_embeddings.shape)}, "
                f"config says {tuple(model.compression_embeddings.shape)}")
        model.compression_embeddings.data.copy_(weights.compression_embeddings)
        if model.task_prompt is not None:
            if weights.task_prompt is None or weights.task_prompt.shape != model.task_prompt.shape:
                found = None if weights.task_prompt is None else tuple(weights.task_prompt.shape)
                raise CheckpointError(f"{path}: task prompt has shape {found}, config says "
                                      f"{tuple(model.task_prompt.shape)}")
            model.task_prompt.data.copy_(weights.task_prompt)
        result = set_peft_model_state_dict(model.lm, weights.adapter)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{path}: adapter has weights the config does not describe: "
                                  f"{result.unexpected_keys[:3]}")
        check_fingerprint(model, path, config.fingerprint)
        model.eval()
        return model

    def grow_compression_tokens(self, K: int) -> None:
        """Grow to K compression slots; new slot i starts as trained slot i mod the old K.

        Why repeat rather than start fresh: under the causal mask slot i only sees the document
        and slots before it, so the first old-K slots still compress exactly as the trained
        model did, and the generator's soft prompt starts as the one it was trained on plus
        extra slots -- a larger K continues a trained compressor instead of restarting it.
        """
        old = self.K
        if K < old:
            raise ValueError(f"cannot grow {old} compression tokens to {K}: fewer slots would drop trained ones")
        if K == old:
            return
        rows = torch.arange(K, device=self.device) % old
        self.compression_embeddings = nn.Parameter(self.compression_embeddings.detach()[rows].clone())
        self.config = self.config.model_copy(update={"num_compression_tokens": K})

    def attach_task_prompt(self, soft_prompt: torch.Tensor) -> None:
        """Give the checkpoint its own task prompt (P, d), read before every profile from now on --
        e.g. a prompt-tuning task prompt on this backbone to start training from."""
        if soft_prompt.ndim != 2 or soft_prompt.shape[1] != self.hidden_size:
            raise ValueError(f"a task prompt is (P, {self.hidden_size}); got {tuple(soft_prompt.shape)}")
        self.task_prompt = nn.Parameter(soft_prompt.detach().float().clone().to(self.device))
        self.config = self.config.model_copy(update={"task_prompt_tokens": int(soft_prompt.shape[0])})

    def save_pretrained(self, path: str, weights_dtype: str = "float32", training: dict | None = None) -> None:
        """weights_dtype="bfloat16" halves the files (see commer.checkpoint.save_checkpoint). `training`:
        the record of how these weights were trained; given, the checkpoint is marked trained."""
        if training is not None:
            self.config = self.config.model_copy(update={"trained": True, "training": training})
        save_checkpoint(self, path, weights_dtype)

    def fingerprint(self) -> str:
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
        """Token ids per document, cut to max_document_tokens (BOS first if the backbone
        expects one), and which ones were cut."""
        return tokenize_documents(self.tokenizer, texts, self.config.max_document_tokens)

    def compress_token_ids(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, K, d) float32 compressions of tokenized documents; differentiable.

        Each row is laid out [document, K compression slots, padding]. Padding goes on the
        right, after the compression slots, so under the causal mask no real position ever
        sees a pad: a document gets the same compression in any batch as alone, and no
        attention mask is needed (which keeps SDPA on its fast causal path).
        """
        # B documents, L_b tokens each; T = max L_b + K positions per row; d = hidden size.
        K = self.K
        lengths = torch.tensor([len(x) for x in batch], device=self.device)  # (B,) L_b
        width = int(lengths.max()) + K  # T
        ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, device=self.device)  # (B, T)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)

        slot = torch.arange(width, device=self.device)[None, :] - lengths[:, None]  # (B, T) position - L_b
        is_slot = (slot >= 0) & (slot < K)  # (B, T) true at the K positions after the document
        embeds = self.embed(ids)  # (B, T, d)
        compression = self.compression_embeddings.to(embeds.dtype)[slot.clamp(0, K - 1)]  # (B, T, d)
        embeds = torch.where(is_slot[..., None], compression, embeds)  # (B, T, d): [doc, K slots, pad]

        hidden = self.body(inputs_embeds=embeds, use_cache=False).last_hidden_state  # (B, T, d)
        at_slots = (lengths[:, None] + torch.arange(K, device=self.device)[None, :])  # (B, K) slot positions
        out = hidden.gather(1, at_slots[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, K, d)
        return out.float()

    def compress_packed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, K, d) float32 compressions with the documents packed into one sequence, no padding
        (commer.packing); equal to compress_token_ids within float tolerance; differentiable."""
        return compress_packed(self, batch)

    @torch.inference_mode()
    def compress(self, texts: Sequence[str], batch_size: int = 32, max_batch_tokens: int | None = None,
                 packed: bool = False) -> torch.Tensor:
        """(N, K, d) compressions of raw texts, batched by length, in input order.

        Batches hold `batch_size` documents, or with `max_batch_tokens` up to that many
        positions (tokens + K per document; padded batches count their padding). `packed`
        concatenates each batch's documents into one sequence (needs max_batch_tokens).
        """
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

    @torch.inference_mode()
    def compression_spread(self, texts: Sequence[str]) -> float:
        """How much the compressions of different documents differ: the mean distance of each document's
        flattened (K·d) compression from their mean, over the mean's norm.

        A compressor that ignores its input makes every document the same vector (spread → 0) while the
        task loss can still fall, since a fixed soft prompt is a task prompt. Training logs this at each
        validation to catch that collapse early (trained checkpoints here read ≈ 0.2; a stage 1 collapsed
        by too high a learning rate read 0.009).
        """
        was_training = self.training
        self.eval()
        try:
            flat = self.compress(texts).reshape(len(texts), -1)  # (N, K·d)
        finally:
            self.train(was_training)
        mean = flat.mean(0, keepdim=True)  # (1, K·d)
        return float((flat - mean).norm(dim=1).mean() / mean.norm().clamp_min(1e-12))

    # ---- generator inputs ---------------------------------------------------------------

    @property
    def uses_chat_template(self) -> bool:
        return self.config.prompt_template == "chat" and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, instruction: str, max_prompt_tokens: int | None = None) -> list[int]:
        """The instruction's token ids as the generator reads them after the soft prompt.

        A leading BOS is not part of them: `_generator_batch` puts it before the soft prompt,
        where the model expects the start of its sequence.
        """
        if self.uses_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
        else:
            template = self.config.prompt_template
            text = (template if "{instruction}" in template else "{instruction}\n").format(instruction=instruction)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.bos_id is not None and ids[:1] == [self.bos_id]:
            ids = ids[1:]  # the template wrote it; it goes first, before the soft prompt
        # Keep the end: the template's cue to answer must survive truncation.
        return ids[-(max_prompt_tokens or self.config.max_prompt_tokens):]

    def answer_ids(self, answer: str) -> list[int]:
        # A chat turn starts on a fresh line; a plain "Answer:" cue is followed by a space.
        text = answer.strip() if self.uses_chat_template else " " + answer.strip()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[: self.config.max_answer_tokens] + [self.end_of_answer_id]

    def _generator_batch(self, soft_prompts: Sequence[SoftPrompt], token_rows: Sequence[list[int]],
                         task_prompt: bool | Sequence[bool] = True):
        """Left-padded rows [pad, BOS?, task prompt?, soft prompt, tokens] → (embeds, attention mask, positions).

        Positions restart at 0 after the padding, so a row's result does not depend on how
        much padding its batch needed. A missing soft prompt (None: no personalization at all)
        simply contributes no positions, and no task prompt. BOS, for backbones that expect one,
        opens the row. `task_prompt` (per row, or for all): read the checkpoint's own task prompt
        before the soft prompt, if it has one; False where the soft prompt is read for another
        purpose than the task (reconstructing a document). An empty (0, d) soft prompt with the
        task prompt is a user without documents answered by the task prompt alone (cold start).
        """
        flags = [task_prompt] * len(soft_prompts) if isinstance(task_prompt, bool) else list(task_prompt)
        # Row b: S_b soft-prompt rows (K for a mean, n·K for a concatenation, 0 without one),
        # N_b tokens, 1 BOS or none; R_b = S_b + N_b (+ 1); T = max R_b; d = hidden size.
        rows = []
        for soft, tokens, with_task in zip(soft_prompts, token_rows, flags):
            token_embeds = self.embed(torch.as_tensor(tokens, dtype=torch.long, device=self.device))  # (N_b, d)
            if soft is not None:
                soft = torch.as_tensor(soft, device=self.device).to(token_embeds.dtype)  # (S_b, d)
                if with_task and self.task_prompt is not None:
                    soft = torch.cat([self.task_prompt.to(token_embeds.dtype), soft], dim=0)  # (P + S_b, d)
                token_embeds = torch.cat([soft, token_embeds], dim=0)  # (S_b + N_b, d)
            if self.bos_id is not None:
                bos = self.embed(torch.tensor([self.bos_id], device=self.device))  # (1, d)
                token_embeds = torch.cat([bos, token_embeds], dim=0)  # (R_b, d)
            rows.append(token_embeds)
        width = max(r.shape[0] for r in rows)  # T
        embeds = torch.stack([F.pad(r, (0, 0, width - r.shape[0], 0)) for r in rows])  # (B, T, d), padded left
        mask = torch.stack([
            torch.arange(width, device=self.device) >= width - r.shape[0] for r in rows
        ]).long()  # (B, T): 0 on the padding, 1 from the row's first real position
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): 0, 1, ... from the first real position
        return embeds, mask, positions

    # ---- training loss and perplexity ---------------------------------------------------

    def merge_documents(self, documents: Sequence[Sequence[str]]) -> list[torch.Tensor | None]:
        """One differentiable mean soft prompt per example (None for an example with no docs)."""
        flat = [doc for docs in documents for doc in docs]
        if not flat:
            return [None] * len(documents)
        kept = [i for i, docs in enumerate(documents) if docs]  # mean_pool takes no empty group
        group = torch.tensor([j for j, i in enumerate(kept) for _ in documents[i]], device=self.device)
        merged = mean_pool(self.compress_token_ids(self.tokenize_documents(flat)[0]), group, len(kept))
        out: list[torch.Tensor | None] = [None] * len(documents)
        for j, i in enumerate(kept):
            out[i] = merged[j]
        return out

    def answer_logits(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                      answers: Sequence[str], max_prompt_tokens: int | None = None,
                      task_prompt: bool | Sequence[bool] = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per example: float32 logits at the positions that predict the answer tokens, (A, V), and
        those tokens, (A,). Only those positions go through the LM head, not the whole sequence.
        `task_prompt`: see _generator_batch (False to read a compression for reconstruction)."""
        answer_rows = [self.answer_ids(a) for a in answers]  # A_b answer tokens (end-of-answer included)
        token_rows = [self.prompt_ids(x, max_prompt_tokens) + a for x, a in zip(instructions, answer_rows)]
        embeds, mask, positions = self._generator_batch(soft_prompts, token_rows, task_prompt)  # (B, T, d) ...
        with self.lm.disable_adapter():
            hidden = self.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        width = hidden.shape[1]  # hidden: (B, T, d)
        out = []
        for row, answer in enumerate(answer_rows):
            # Rows are left-padded, so every answer ends at the last position.
            predictors = hidden[row, width - len(answer) - 1: width - 1]  # (A_b, d): position t predicts t + 1
            out.append((self.lm_head(predictors).float(),  # (A_b, V)
                        torch.as_tensor(answer, device=self.device)))  # (A_b,)
        return out

    def answer_nll(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                   answers: Sequence[str], max_prompt_tokens: int | None = None,
                   task_prompt: bool | Sequence[bool] = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example summed negative log-likelihood of the answer tokens, and their count.

        Only answer tokens are scored (the paper's loss).
        """
        rows = self.answer_logits(soft_prompts, instructions, answers, max_prompt_tokens, task_prompt)
        nll = [F.cross_entropy(logits, target, reduction="sum") for logits, target in rows]
        count = [len(target) for _, target in rows]
        return torch.stack(nll), torch.tensor(count, device=self.device, dtype=torch.float32)  # (B,), (B,)

    def documents_nll(self, documents: Sequence[Sequence[str]], instructions: Sequence[str],
                      answers: Sequence[str], task_prompt: bool | Sequence[bool] = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """answer_nll given each example's documents, end to end through compressor and merge."""
        return self.answer_nll(self.merge_documents(documents), instructions, answers, task_prompt=task_prompt)

    def loss(self, documents: Sequence[Sequence[str]], instructions: Sequence[str],
             answers: Sequence[str]) -> torch.Tensor:
        """Mean cross-entropy per answer token, end to end through compressor and merge."""
        nll, count = self.documents_nll(documents, instructions, answers)
        return nll.sum() / count.sum()

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """What training updates, by group (each with its own learning rate): LoRA, compression embeddings,
        and the task prompt where the checkpoint has one."""
        groups = {"lora": [p for n, p in self.lm.named_parameters() if "lora_" in n],
                  "compression_embeddings": [self.compression_embeddings]}
        if self.task_prompt is not None:
            groups["task_prompt"] = [self.task_prompt]
        return groups

    def training_stages(self) -> list[dict]:
        """The recorded stages that trained these weights so far (empty for a fresh model)."""
        return list(self.config.training.get("stages", []))

    @torch.inference_mode()
    def perplexity(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                   answers: Sequence[str], max_prompt_tokens: int | None = None,
                   task_prompt: bool | Sequence[bool] = True) -> torch.Tensor:
        """Per-example perplexity of a reference answer given a soft prompt (`task_prompt`: _generator_batch)."""
        nll, count = self.answer_nll(soft_prompts, instructions, answers, max_prompt_tokens, task_prompt)
        return torch.exp(nll / count).cpu()

    # ---- generation ---------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, soft_prompts: Sequence[SoftPrompt], instructions: Sequence[str],
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, max_prompt_tokens: int | None = None,
                 task_prompt: bool | Sequence[bool] = True) -> list[str]:
        """Answers from the frozen backbone (adapter off), greedy unless do_sample.

        An answer ends at the end-of-answer token (or eos). `max_prompt_tokens` overrides the
        checkpoint's instruction limit (prompts keep their last tokens). `task_prompt`: whether a soft
        prompt is read after the checkpoint's own task prompt (_generator_batch); False reads it alone,
        e.g. the bundled task prompt as the baseline it is.
        """
        eos = self.end_of_answer_id
        stops = torch.tensor(self.stop_ids, device=self.device)
        embeds, mask, positions = self._generator_batch(
            soft_prompts, [self.prompt_ids(x, max_prompt_tokens) for x in instructions], task_prompt)
        rng = torch.Generator(device=self.device)
        rng.manual_seed(0 if seed is None else seed)
        batch = embeds.shape[0]
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        produced: list[torch.Tensor] = []
        with self.lm.disable_adapter():
            out = self.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
            cache = _cache_of(out)
            for _ in range(max_new_tokens):
                logits = self.lm_head(out.last_hidden_state[:, -1]).float()
                token = _pick(logits, do_sample, temperature, top_p, rng)
                token = torch.where(done, torch.full_like(token, eos), token)
                produced.append(token)
                done |= torch.isin(token, stops)
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                out = self.body(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                                use_cache=True, **{_cache_arg(self.body): cache})
        if not produced:
            return [""] * batch
        tokens = torch.stack(produced, dim=1).tolist()
        return [self.tokenizer.decode(_until(row, self.stop_ids), skip_special_tokens=True).strip()
                for row in tokens]


def tokenize_documents(tokenizer, texts: Sequence[str], limit: int) -> tuple[list[list[int]], list[bool]]:
    """The compressor's tokenization rule, usable with the tokenizer alone, so tokenizing
    workers need not load the model: the text's tokens cut at `limit`, preceded by BOS when
    the backbone expects one (commer.special_tokens.leading_bos_id)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = leading_bos_id(tokenizer)
    start = [bos] if bos is not None else []
    return [start + x[:limit] for x in ids], [len(x) > limit for x in ids]


# transformers 5.24 names the decoder's KV cache `cache` (earlier 5.x: `past_key_values`); ask the
# model instead of guessing, so a version change cannot surface as an AttributeError mid-job.
def _cache_arg(body: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _cache_of(out):
    return out.cache if hasattr(out, "cache") else out.past_key_values


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


def _until(tokens: list[int], stops: Sequence[int]) -> list[int]:
    ends = [i for i, t in enumerate(tokens) if t in stops]
    return tokens[: ends[0]] if ends else tokens
