"""The model inside Beam: one ComMer per worker process, tokenizing, token-budget batching and the
two RunInference handlers (compress: token ids → K×d compressions; generate: requests → predictions).

The device is decided on the worker, not where the job is launched: a Dataflow launcher has no GPU
while its workers do. `--device auto` is CUDA when the worker has it, and `--dtype auto` is bfloat16
on CUDA, float32 on CPU (commer.precision). compress_users resolves the dtype once on its launcher
and hands the workers the name (pipelines.compute_dtype: its tables record it); generate resolves
`auto` here, per worker.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.transforms.combiners import TupleCombineFn
from pydantic import BaseModel, Field, ValidationError
from transformers import AutoTokenizer

from commer import ComMer
from commer.backbone import resolve_backbone
from commer.checkpoint import read_config, read_weights
from commer.defaults import BUNDLED_TASK_PROMPT
from commer.model import tokenize_documents
from commer.packing import cost
from commer.precision import emulated_bfloat16, resolve, resolve_device
from commer.prompting import fit_documents
from commer.task_prompt import TaskPromptError, load_task_prompt
from pipelines import faults, progress
from pipelines.batching import (BATCH_DISTRIBUTIONS, Batching, batch_key, batch_positions, length_bucket,
                                padding_tokens, plan_keys, split_batches)
from pipelines.elements import CompressedDocument, GenerationRequest, TokenizedDocument
from pipelines.flags import IN_PROMPT_MAX_TOKENS
from pipelines.runtime import INFERENCE_NAMESPACE, CliError, checkpoint_config, counter, distribution
from schemas import Prediction
from schemas.validation import ValidDocument, describe_errors

log = logging.getLogger(__name__)

_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()
_TOKENIZERS: dict[tuple, object] = {}


def resolve_on_worker(dtype: str, device: str) -> tuple[str, str]:
    """(dtype, device) with 'auto' resolved for the worker this runs on (commer.precision's rule)."""
    device, dtype = resolve(device, dtype)
    return dtype, device


def shared_model(checkpoint: str, backbone: str | None, dtype: str, device: str, cache: str | None):
    """The ComMer model for these settings, loaded once per process and shared by its threads."""
    dtype, device = resolve_on_worker(dtype, device)
    key = (checkpoint, backbone, dtype, device, cache)
    with _MODELS_LOCK:
        if key not in _MODELS:
            if device == "cuda" and not torch.cuda.is_available():
                raise CliError("--device=cuda was given but this worker has no CUDA device; use --device=cpu "
                               "(or auto)")
            if emulated_bfloat16(device, dtype):
                log.warning("--dtype bfloat16 on a CPU without native bfloat16 (AVX-512 BF16, AMX or Arm BF16): "
                            "emulated, slower than float32")
            model = ComMer.from_pretrained(checkpoint, backbone=backbone, dtype=dtype, cache=cache)
            _MODELS[key] = model.to(device).eval()
            log.info("model loaded on %s in %s", device, dtype)
        return _MODELS[key]


def load_tokenizer(checkpoint: str, backbone: str | None, cache: str | None):
    """The backbone's tokenizer alone (no weights), once per process: tokenizing workers stay small."""
    key = (checkpoint, backbone, cache)
    if key not in _TOKENIZERS:
        config = read_config(checkpoint)
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(str(resolve_backbone(backbone or config.backbone, cache)))
    return _TOKENIZERS[key]


def tokenize(tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
    """One document by the compressor's own rule (commer.model.tokenize_documents)."""
    (ids,), (cut,) = tokenize_documents(tokenizer, [text], limit)
    return ids, cut


# ---- compress ---------------------------------------------------------------------------

class Tokenize(beam.DoFn):
    """ValidDocument → (length bucket, TokenizedDocument)."""

    def __init__(self, checkpoint, backbone, cache, limit: int, width: int):
        self.args = (checkpoint, backbone, cache)
        self.limit, self.width = limit, width
        self.truncated, self.tokens = counter("truncated"), counter("tokens")

    def setup(self):
        self.tokenizer = load_tokenizer(*self.args)

    def process(self, doc: ValidDocument):
        ids, cut = tokenize(self.tokenizer, doc.text, self.limit)
        if cut:
            self.truncated.inc()
        self.tokens.inc(len(ids))
        yield length_bucket(len(ids), self.width), TokenizedDocument(doc.user_id, doc.doc_id, ids, doc.created_at)


class KeyBatches(beam.PTransform):
    """(length bucket, document) → (batch key, document): the keys planned from every bucket's documents and
    positions (pipelines.batching.plan_keys, on the budget of the worker's device), so a small job is one key
    and a large job one key per up to KEY_BATCHES batches. `shards` (--batch_shards): a fixed number of keys
    per bucket instead.

    The plan is a side input because how many keys a bucket needs is known only once every document is
    tokenized; it is a few numbers per bucket, but the tokenized documents are read twice (sizes, then keys),
    which on Dataflow materializes them once more before the shuffle."""

    def __init__(self, batching: Batching, shards: Optional[int] = None):
        super().__init__()
        self.batching, self.shards = batching, shards

    def expand(self, documents):
        keys = (documents
                | "BucketSizes" >> beam.Map(_bucket_size, self.batching.K)
                | "SumBuckets" >> beam.CombinePerKey(TupleCombineFn(sum, sum))
                | "AllBuckets" >> beam.combiners.ToDict()
                | "PlanKeys" >> beam.Map(_plan_keys, self.batching, self.shards))
        return documents | "Key" >> beam.Map(_keyed, beam.pvalue.AsSingleton(keys))


def _bucket_size(element, K: int):
    bucket, doc = element
    return bucket, (1, cost(len(doc.token_ids), K))  # (documents, positions)


def _keyed(element, keys: dict):
    bucket, doc = element
    return batch_key(doc.user_id, doc.doc_id, bucket, keys), doc


def _plan_keys(sizes: dict, batching: Batching, shards: Optional[int]) -> dict:
    budget = batching.budget(resolve_device(batching.device))
    return plan_keys(sizes, budget, batching.max_batch_documents, shards)


_PADDING_TOKENS = counter("padding_tokens")
_INFERRED = counter("documents_inferred")
# What the batches are (run_summary.json's "batches"): their count, documents and positions, and how full
# each is of its budget (per mille; a document longer than the budget fills its own batch past 1000).
_BATCH_DOCUMENTS, _BATCH_POSITIONS, _BATCH_FILL = (distribution(name) for name in BATCH_DISTRIBUTIONS)


class SplitBatches(beam.DoFn):
    """(bucket key, documents) → token-budget batches (pipelines.batching.split_batches); the default
    budget is the device's of the worker this runs on."""

    def __init__(self, batching: Batching):
        self.batching = batching

    def setup(self):
        self.budget = self.batching.budget(resolve_device(self.batching.device))

    def process(self, element):
        for batch in split_batches(element, self.batching, self.budget):
            _PADDING_TOKENS.inc(padding_tokens(batch, self.batching.packed))
            positions = batch_positions(batch, self.batching.K, self.batching.packed)
            _BATCH_DOCUMENTS.update(len(batch))
            _BATCH_POSITIONS.update(positions)
            _BATCH_FILL.update(round(1000 * positions / self.budget))
            yield batch


class Compressor:
    """What the ModelHandler loads: the shared ComMer model behind a numpy-in, numpy-out call
    (so it also works through large_model's cross-process proxy)."""

    def __init__(self, model, packed: bool = False):
        self.model, self.packed = model, packed

    def compress(self, batch: list[list[int]]) -> np.ndarray:
        step = self.model.compress_packed if self.packed else self.model.compress_token_ids
        with torch.inference_mode():
            return step(batch).cpu().numpy()


class ComMerModelHandler(ModelHandler[list[TokenizedDocument], PredictionResult, Compressor]):
    """RunInference handler: one element = one token-budget batch of TokenizedDocuments, compressed padded
    or, with `packed`, as one packed sequence: PredictionResult(the batch, its [n, K, d] compressions).

    Batches are formed upstream by length and tokens, so RunInference must not re-batch them.
    """

    def __init__(self, checkpoint: str, backbone: str | None, dtype: str, device: str, cache: str | None,
                 large_model: bool = False, packed: bool = False):
        super().__init__()
        self.args = (checkpoint, backbone, dtype, device, cache)
        self.large_model, self.packed = large_model, packed

    def load_model(self) -> Compressor:
        progress.now("loading the model")
        compressor = Compressor(shared_model(*self.args), self.packed)
        progress.now()
        faults.point("model_loaded")
        return compressor

    def run_inference(self, batch: Sequence[list[TokenizedDocument]], model: Compressor,
                      inference_args=None) -> list[PredictionResult]:
        done = sum(len(element) for element in batch)
        progress.now(f"compressing a batch of {done} documents")
        results = [PredictionResult(element, model.compress([doc.token_ids for doc in element]))
                   for element in batch]
        progress.now()
        progress.add(progress.DONE, done)
        _INFERRED.inc(done)  # the same progress as a Beam metric (Dataflow's console)
        return results

    def get_num_bytes(self, batch: Sequence[list[TokenizedDocument]]) -> int:
        return sum(8 * len(doc.token_ids) for element in batch for doc in element)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": 1}

    def share_model_across_processes(self) -> bool:
        return self.large_model

    def get_metrics_namespace(self) -> str:
        return INFERENCE_NAMESPACE


def unbatch(result: PredictionResult) -> Iterator[CompressedDocument]:
    """A compressed batch → one CompressedDocument per document."""
    faults.point("compressing")
    for doc, comp in zip(result.example, result.inference):
        yield CompressedDocument(doc.user_id, doc.doc_id, np.asarray(comp, dtype=np.float32), doc.created_at)


# ---- generate ---------------------------------------------------------------------------

class GenerationSettings(BaseModel):
    """What a worker needs to generate: travels with the ModelHandler."""

    checkpoint: str = Field(description="Checkpoint folder.")
    backbone: Optional[str] = Field(None, description="Backbone override.")
    dtype: str = Field("auto", description="Backbone precision: float32, bfloat16 or auto (bf16 on CUDA).")
    device: str = Field("auto", description="cpu, cuda or auto (CUDA when the worker has it).")
    cache_dir: Optional[str] = Field(None, description="Backbone cache folder.")
    fingerprint: str = Field(description="The checkpoint's fingerprint, written on every prediction.")
    mode: str = Field("commer", description="commer, in_prompt or none.")
    num_documents: int = Field(4, ge=0, description="In-prompt documents per query.")
    max_prompt_tokens: int = Field(0, ge=0, description="Prompt limit; 0 = the checkpoint's.")
    max_new_tokens: int = Field(32, gt=0, description="Most generated tokens.")
    do_sample: bool = Field(False, description="Sample instead of greedy.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass.")
    seed: int = Field(0, description="Base sampling seed.")
    batch_size: int = Field(16, gt=0, description="Queries per model call.")
    task_prompt: Optional[str] = Field(None, description=(
        "Task-prompt folder a user without a profile is answered with (--mode=commer; None: no soft prompt)."))


class _Loaded:
    """The shared model and the prompt limit this job reads instructions with."""

    def __init__(self, model, max_prompt_tokens: int):
        self.model = model
        self.max_prompt_tokens = max_prompt_tokens or None


def sample_seed(seed: int, query_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{query_id}".encode()).digest()[:4], "little")


class ComMerGenerator(ModelHandler[GenerationRequest, dict, _Loaded]):
    """RunInference handler: a batch of GenerationRequests → Prediction rows (schemas.Prediction dicts)."""

    def __init__(self, settings: GenerationSettings):
        self.settings = settings

    def load_model(self):
        s = self.settings
        progress.now("loading the model")
        model = shared_model(s.checkpoint, s.backbone, s.dtype, s.device, s.cache_dir)
        progress.now()
        return _Loaded(model, s.max_prompt_tokens or (IN_PROMPT_MAX_TOKENS if s.mode == "in_prompt" else 0))

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.settings.batch_size, "max_batch_size": self.settings.batch_size}

    def get_num_bytes(self, batch: Sequence[GenerationRequest]) -> int:
        return sum(len(r.instruction) + (r.soft_prompt.nbytes if r.soft_prompt is not None else 0) for r in batch)

    def get_metrics_namespace(self) -> str:
        return INFERENCE_NAMESPACE

    def run_inference(self, batch: Sequence[GenerationRequest], model: _Loaded,
                      inference_args=None) -> Iterator[dict]:
        s, m, limit = self.settings, model.model, model.max_prompt_tokens
        rows = list(batch)
        instructions, doc_counts = [], []
        for r in rows:
            if r.documents is None:
                instructions.append(r.instruction)
                doc_counts.append(r.doc_count)
            else:
                text, used = fit_documents(r.documents, r.instruction,
                                           lambda t: len(m.prompt_ids(t, 1 << 30)), limit or m.config.max_prompt_tokens)
                instructions.append(text)
                doc_counts.append(used if r.documents else 0)
        soft = [r.soft_prompt for r in rows]
        # A profile is read after the checkpoint's own task prompt (if it has one); a cold-start prompt alone.
        own = [r.personalized for r in rows]
        options = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, temperature=s.temperature,
                       top_p=s.top_p, max_prompt_tokens=limit)
        progress.now(f"generating a batch of {len(rows)} answers (up to {s.max_new_tokens} tokens each)")
        if s.do_sample:
            # One seed per query, so a query's sample does not depend on what it was batched with.
            texts = [m.generate([p], [x], seed=sample_seed(s.seed, r.query_id), task_prompt=f, **options)[0]
                     for p, x, r, f in zip(soft, instructions, rows, own)]
        else:
            texts = m.generate(soft, instructions, seed=s.seed, task_prompt=own, **options)
        progress.now(f"scoring the references of a batch of {len(rows)}")
        scored = [i for i, r in enumerate(rows) if r.reference is not None]
        perplexity = _perplexities(m, scored, [soft[i] for i in scored], [instructions[i] for i in scored],
                                   rows, limit, len(rows), [own[i] for i in scored])
        # The same reference without the profile (no soft prompt, no documents): evaluate compares each
        # personalized query with itself, never with other users' queries.
        paired = [i for i in scored if rows[i].personalized]
        unpersonalized = _perplexities(m, paired, [None] * len(paired), [rows[i].instruction for i in paired],
                                       rows, limit, len(rows))
        progress.now()
        progress.add(progress.DONE, len(rows))
        for r, text, p, x, n, ppl, base, f in zip(rows, texts, soft, instructions, doc_counts, perplexity,
                                                  unpersonalized, own):
            # P more positions where the soft prompt is read after the checkpoint's own task prompt.
            tokens = len(m.prompt_ids(x, limit)) + (len(p) + (m.config.task_prompt_tokens if f else 0)
                                                    if p is not None else 0)
            yield Prediction(user_id=r.user_id, query_id=r.query_id, instruction=r.instruction, prediction=text,
                             personalized=r.personalized, doc_count=n, reference=r.reference,
                             perplexity=ppl, perplexity_unpersonalized=base, prompt_tokens=tokens,
                             model_fingerprint=s.fingerprint).model_dump()


def _perplexities(model, which: list[int], soft: list, instructions: list[str], rows: list[GenerationRequest],
                  limit: Optional[int], size: int, task_prompt: bool | list[bool] = True) -> list[Optional[float]]:
    """Perplexity of the references of rows `which` (None for the others), one batched forward."""
    out: list[Optional[float]] = [None] * size
    if which:
        values = model.perplexity(soft, instructions, [rows[i].reference for i in which],
                                  max_prompt_tokens=limit, task_prompt=task_prompt).tolist()
        for i, v in zip(which, values):
            out[i] = float(v)
    return out


# GenerationSettings.task_prompt meaning "the checkpoint's own task prompt", read alone like any cold-start prompt.
CHECKPOINT_TASK_PROMPT = "checkpoint"


def cold_start_folder(flag: str, config) -> Optional[str]:
    """--task_prompt → what a user without a profile is answered with: a task-prompt folder (read alone), checked
    against the checkpoint's backbone (a task prompt is a soft prompt in that backbone's embedding space),
    CHECKPOINT_TASK_PROMPT, or None.

    'default' is the task prompt bundled beside the default checkpoint when it fits this checkpoint's backbone
    -- also for a checkpoint with its own task prompt, whose own was trained to be read before a profile, never
    alone (on validation authors alone it scored worse than the bundled one: issue 23) -- else the checkpoint's
    own if it has one, else None (said once in the log). 'checkpoint' is the checkpoint's own task prompt alone;
    a folder that does not fit is one CLI line."""
    own = bool(config.task_prompt_tokens)
    if flag == "none":
        return None
    if flag == CHECKPOINT_TASK_PROMPT:
        if not own:
            raise CliError("--task_prompt=checkpoint: this checkpoint has no task prompt of its own (use default, "
                           "a folder, or none)")
        return CHECKPOINT_TASK_PROMPT
    folder = str(BUNDLED_TASK_PROMPT) if flag == "default" else flag
    try:
        load_task_prompt(folder).check_backbone(config.backbone_hash, config.hidden_size)
    except (TaskPromptError, OSError) as exc:
        if flag != "default":
            raise CliError(f"--task_prompt: {exc} (or --task_prompt=none: no soft prompt without a profile)") from None
        log.info("users without a profile are answered %s: %s", "with the checkpoint's own task prompt alone"
                 if own else "without a soft prompt", exc)
        return CHECKPOINT_TASK_PROMPT if own else None
    return folder


def cold_start_prompt(settings: GenerationSettings) -> Optional[np.ndarray]:
    """The (K, d) task prompt of `settings` as the array PlanUser hands out, or None."""
    if settings.task_prompt == CHECKPOINT_TASK_PROMPT:
        return read_weights(settings.checkpoint, settings.cache_dir).task_prompt.float().numpy()
    return load_task_prompt(settings.task_prompt).soft_prompt.numpy() if settings.task_prompt else None


def generation_settings(opts, options=None) -> GenerationSettings:
    """generate's flags → the settings its workers get; a bad value is one CLI line.

    On a local runner the launcher is the worker, so `--dtype auto` is resolved here and the predictions table
    records the dtype its answers were computed in (bfloat16 changes perplexities slightly, issue 27). For
    remote workers `auto` travels as is and each worker resolves it for its own device (bfloat16 on CUDA):
    the table then records `auto`; name --dtype to have one recorded."""
    checkpoint, config = checkpoint_config(opts)
    dtype = resolve_on_worker(opts.dtype, opts.device)[0] if options is None or progress.runs_locally(options) \
        else opts.dtype
    if not config.trained and opts.mode == "commer":
        log.warning("checkpoint %s is untrained (trained=false): soft prompts carry little meaning", checkpoint)
    try:
        return GenerationSettings(
            checkpoint=checkpoint, backbone=opts.backbone, dtype=dtype, device=opts.device,
            cache_dir=opts.cache_dir, fingerprint=config.fingerprint, mode=opts.mode,
            num_documents=opts.num_documents, max_prompt_tokens=opts.max_prompt_tokens,
            max_new_tokens=opts.max_new_tokens, do_sample=opts.do_sample, temperature=opts.temperature,
            top_p=opts.top_p, seed=opts.seed, batch_size=opts.batch_size,
            task_prompt=cold_start_folder(opts.task_prompt, config) if opts.mode == "commer" else None)
    except ValidationError as exc:
        raise CliError(f"invalid flag value: {describe_errors(exc)} (see --help)") from None
