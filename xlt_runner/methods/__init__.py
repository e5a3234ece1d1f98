"""Method registry: ``method.name`` → LightningModule class.

To add a method: write a module here with a ``ClassificationMethod`` (or another
family's base) subclass, a config dataclass registered with
``xlt_runner.config.register_method_schema``, a ``conf/method/<name>.yaml`` whose
defaults list starts with ``<name>_schema``, and an entry in ``METHODS``.
"""
from __future__ import annotations

from xlt_runner.config import ConfigError
from xlt_runner.methods.base import ClassificationMethod, ClassificationTask, NonFiniteValueError
from xlt_runner.methods.finetune import FullFineTuning, HeadOnly, Lora
from xlt_runner.methods.soft_prompt import CrossPromptEncoder, DualPrompt, SoftPromptTuning

METHODS: dict[str, type[ClassificationMethod]] = {
    HeadOnly.name: HeadOnly,
    FullFineTuning.name: FullFineTuning,
    Lora.name: Lora,
    SoftPromptTuning.name: SoftPromptTuning,
    CrossPromptEncoder.name: CrossPromptEncoder,
    DualPrompt.name: DualPrompt,
    "dual_xpe30": DualPrompt,  # presets of dual with their own name in records
    "dual_xpe70": DualPrompt,
}


def method_class(name: str) -> type[ClassificationMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; valid choices: {sorted(METHODS)}") from None


__all__ = ["METHODS", "method_class", "ClassificationMethod", "ClassificationTask", "NonFiniteValueError"]
