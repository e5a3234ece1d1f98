"""Methods: ``method.family`` -> LightningModule class.

A method registers itself beside its config schema::

    @METHODS.register("spt", SptConfig)
    class SoftPromptTuning(ClassificationMethod): ...

and ``conf/method/<name>.yaml`` starts with ``defaults: [<family>_schema]`` (or with another
method's yaml, for a preset such as ``dual_xpe30``: same family, its own ``name``). Every
module of this package is imported on first lookup, so nothing else lists the method.
"""
from __future__ import annotations

from xlt_runner.registry import Registry

METHODS: Registry = Registry("method", "method.family", ("xlt_runner.methods",), group="method", name_attribute="name")


def method_class(family: str, task_kind: str):
    """The class that runs ``method.family`` on ``task_kind`` benchmarks (a family may register a
    variant per task kind: ``lora`` for classification, ``lora:generation`` for decoders);
    ConfigError names the choices."""
    return METHODS.variant(family, task_kind)


from xlt_runner.methods.base import ClassificationMethod, ClassificationTask, NonFiniteValueError  # noqa: E402

__all__ = ["METHODS", "method_class", "ClassificationMethod", "ClassificationTask", "NonFiniteValueError"]
