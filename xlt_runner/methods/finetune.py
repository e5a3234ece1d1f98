"""Baselines that exercise the runner: a probe, full fine-tuning and LoRA.

Supports: classification benchmarks on encoder backbones (``model.kind=encoder``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from xlt_runner.config import ClassificationMethodConfig, ConfigError
from xlt_runner.methods import METHODS
from xlt_runner.methods.base import ClassificationMethod


@dataclass
class HeadOnlyConfig(ClassificationMethodConfig):
    """Frozen backbone; only the classification head trains."""
    name: str = "head_only"
    family: str = "head_only"


@dataclass
class FullFTConfig(ClassificationMethodConfig):
    """Every backbone parameter and the head train."""
    name: str = "full_ft"
    family: str = "full_ft"


@dataclass
class LoraConfig(ClassificationMethodConfig):
    """LoRA adapters (peft) on ``target_modules`` (null: the attention query and value projections,
    found by name: ``query``/``value`` in BERT-style encoders, ``q_proj``/``v_proj`` in Llama-style
    decoders); a classification head trains too. ``pool``/``classifier_dropout`` apply to
    classification only."""
    name: str = "lora"
    family: str = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: Optional[list[str]] = None


#: Attention query/value projection names that ``target_modules: null`` looks for, in order.
DEFAULT_LORA_TARGETS = (("query", "value"), ("q_proj", "v_proj"))


def apply_lora(model, cfg: LoraConfig):
    """``model`` wrapped by peft with LoRA on ``cfg.target_modules`` (or the default projections);
    ConfigError, listing the model's linear layers, when a named module does not exist."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
    targets = list(cfg.target_modules) if cfg.target_modules is not None else next(
        (list(pair) for pair in DEFAULT_LORA_TARGETS if set(pair) <= names), None)
    if targets is None:
        raise ConfigError(f"method.target_modules=null finds no attention query/value projections "
                          f"({' or '.join('/'.join(p) for p in DEFAULT_LORA_TARGETS)}) in this model; name them: "
                          f"its linear layers are {linear}")
    unknown = [m for m in targets if m not in names]
    if unknown:
        raise ConfigError(f"method.target_modules {unknown} are not modules of this backbone; "
                          f"its linear layers are named {linear}")
    return get_peft_model(model, PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                target_modules=targets, bias="none"))


@METHODS.register("head_only", HeadOnlyConfig)
class HeadOnly(ClassificationMethod):
    """Frozen backbone (eval mode, no autograd graph); only the head trains."""

    def configure_trainable(self) -> None:
        self.backbone.requires_grad_(False)


@METHODS.register("full_ft", FullFTConfig)
class FullFineTuning(ClassificationMethod):
    """Backbone and head train together."""


@METHODS.register("lora", LoraConfig)
class Lora(ClassificationMethod):
    """LoRA adapters from peft on ``target_modules``; the backbone's own weights stay frozen."""

    def configure_trainable(self) -> None:
        self.backbone = apply_lora(self.backbone, self.cfg)
