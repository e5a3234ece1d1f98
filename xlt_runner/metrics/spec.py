"""What a metric is, for everything that shows or compares it (records, report, wandb, console).

A task kind declares its metrics as :class:`MetricSpec` s; the run record stores them
(``record["metrics"]``), so a report never guesses a metric's direction or scale.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """``name`` as in per-language and group results; ``higher_is_better``; ``percent``: the
    value is a fraction in [0, 1] shown ×100; ``aggregation``: how languages combine into a group
    (``mean``: unweighted mean over languages); ``description``: one line for tables and docs."""
    name: str
    higher_is_better: bool = True
    percent: bool = True
    aggregation: str = "mean"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetricSpec":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def display(self, value: float) -> float:
        """The value as shown: ×100 for a percentage."""
        return value * 100.0 if self.percent else value

    def best(self, values):
        """The best of ``values`` under this metric's direction."""
        return max(values) if self.higher_is_better else min(values)


#: Classification metrics (SIB-200, the CLDR demo). Records written before metric specs were
#: stored carry these implicitly.
CLASSIFICATION_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(name="accuracy", description="share of test examples classified correctly"),
    MetricSpec(name="macro_f1", description="F1 averaged over the classes present in gold or predictions"),
)

#: The language-ID probe's metric (``regime=langid_probe``): mean per-language recall of a linear
#: language-ID classifier on the method's representations (lower = less language identity).
LANGID_RECALL = MetricSpec(name="langid_recall", higher_is_better=False,
                           description="language-ID probe: mean per-language recall (lower is more language-agnostic)")
