"""The checkpoint's configuration: everything needed to rebuild a ComMer model, as JSON."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# 2: backbone_hash is the backbone identity v2 (tensors, math config, tokenizer; no version labels).
CONFIG_FORMAT_VERSION = 2


class LoraSettings(BaseModel):
    """LoRA on the compressor (paper appendix A.1: r=64, alpha=16, dropout 0.1)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(64, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Backbone linear layers that get an adapter (ICAE's choice: attention q and v).",
    )


class ComMerConfig(BaseModel):
    """Saved as commer_config.json in every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = Field(CONFIG_FORMAT_VERSION, description="Version of this file's layout.")
    backbone: str = Field("default", description="Backbone reference: 'default' (embedded SmolLM2), a local HF folder or a gs:// URL.")
    backbone_name: str = Field("", description="Human-readable backbone name, recorded at creation.")
    backbone_hash: str = Field("", description="Backbone identity: sha256 of its tensors, math config and tokenizer (commer.backbone.hash_backbone); loading onto another backbone is refused.")
    hidden_size: int = Field(0, ge=0, description="Backbone hidden size d (the soft prompt is K×d).")
    num_compression_tokens: int = Field(8, gt=0, description="K: compression embeddings appended after each document.")
    task_prompt_tokens: int = Field(0, ge=0, description=(
        "P: soft tokens of the checkpoint's own task prompt, read before every profile's soft prompt "
        "([BOS, task prompt, profile, instruction]); 0: none, the profile alone (the paper's generator)."))
    max_document_tokens: int = Field(256, gt=0, description="Documents longer than this are truncated (and counted), never an error.")
    max_prompt_tokens: int = Field(256, gt=0, description="Instruction prompts longer than this keep their last tokens.")
    max_answer_tokens: int = Field(64, gt=0, description="Answers (training targets, perplexity references) are truncated to this.")
    prompt_template: str = Field(
        "chat",
        description="How the generator sees an instruction: 'chat' applies the tokenizer's chat "
                    "template (instruction as the user turn); anything else is a format string "
                    "containing '{instruction}', for base models without one.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Compressor adapter settings.")
    seed: int = Field(0, description="Seed for initialising compression embeddings and LoRA.")
    trained: bool = Field(False, description="False for a freshly initialised (untrained) checkpoint.")
    training: dict = Field(default_factory=dict, description="Free-form record of how the weights were trained.")
    fingerprint: str = Field("", description="Hash of backbone identity + trained weights, written on save and checked on load.")
