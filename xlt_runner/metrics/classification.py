"""Per-language accuracy and macro-F1 from one confusion tensor.

State is a ``(languages, classes, classes)`` count tensor summed across processes, so
evaluation under DDP gives the same numbers as one process as long as every example
is seen exactly once (the data module's evaluation sampler shards without padding).
"""
from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class PerLanguageClassification(Metric):
    """Accumulates a confusion matrix per language; ``compute`` returns per-language metrics.

    ``update(preds, target, lang, loss=None)`` takes predicted class indices, gold class indices,
    language indices and optionally each example's cross-entropy in nats (all shape ``(batch,)``).
    ``compute()`` returns a dict of tensors of shape ``(languages,)``: ``accuracy`` and
    ``macro_f1`` in [0, 1], ``n`` (examples) and ``loss`` (mean cross-entropy of the examples
    given a loss; NaN for a language with none).
    Macro-F1 averages over classes that occur in the gold labels or the predictions of
    that language, as ``torchmetrics.functional.multiclass_f1_score(average="macro")`` does.
    """

    full_state_update = False

    def __init__(self, num_languages: int, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_languages = num_languages
        self.num_classes = num_classes
        self.add_state("confusion", default=torch.zeros(num_languages, num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")
        self.add_state("loss_sum", default=torch.zeros(num_languages, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("loss_n", default=torch.zeros(num_languages, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, lang: torch.Tensor,
               loss: torch.Tensor | None = None) -> None:
        c = self.num_classes
        flat = (lang.long() * c + target.long()) * c + preds.long()
        counts = torch.bincount(flat, minlength=self.num_languages * c * c)
        self.confusion += counts.view(self.num_languages, c, c)
        if loss is not None:
            self.loss_sum.index_add_(0, lang.long(), loss.detach().double())
            self.loss_n += torch.bincount(lang.long(), minlength=self.num_languages)

    def compute(self) -> dict[str, torch.Tensor]:
        conf = self.confusion.double()
        n = conf.sum(dim=(1, 2))
        tp = conf.diagonal(dim1=1, dim2=2)
        accuracy = tp.sum(1) / n.clamp(min=1)
        gold = conf.sum(2)
        pred = conf.sum(1)
        denom = gold + pred
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
        present = (denom > 0).double()
        macro_f1 = (f1 * present).sum(1) / present.sum(1).clamp(min=1)
        loss = torch.where(self.loss_n > 0, self.loss_sum / self.loss_n.clamp(min=1), torch.full_like(self.loss_sum, math.nan))
        return {"accuracy": accuracy, "macro_f1": macro_f1, "n": n.long(), "loss": loss}

    def per_language(self) -> dict[str, torch.Tensor]:
        """``compute()`` with every value shaped ``(languages,)``, also for one language
        (torchmetrics squeezes single-element results to scalars)."""
        return {k: v.reshape(-1) for k, v in self.compute().items()}
