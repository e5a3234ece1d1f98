"""The contract every method follows, and the shared classification machinery.

A method is a LightningModule built by ``Method.build(cfg, backbone, task)``. It
declares which benchmark tasks and backbone kinds it supports and fails fast on
anything else. Classification methods subclass :class:`ClassificationMethod` and
override at most three things: which parameters train (``configure_trainable``),
how a batch becomes a pooled representation (``encode``), and optimiser parameter
groups (``parameter_groups``). Evaluation always goes through
:class:`~xlt_runner.metrics.PerLanguageClassification`.

Checkpoints hold only trainable parameters (plus optimiser and loop state), so
checkpointing a soft prompt or a head on a frozen 560M-parameter encoder writes
kilobytes, not gigabytes; frozen weights come from the backbone source.
"""
from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from xlt_runner.config import MODEL_POOLINGS, ClassificationMethodConfig, ConfigError, MethodConfig, OptimConfig
from xlt_runner.metrics import PerLanguageClassification
from xlt_runner.models import Backbone, count_parameters


class NonFiniteValueError(FloatingPointError):
    """The training loss, or the logits at validation or test, became NaN or infinite."""


def resolve_init_from(spec: str, key: str = "method.init_from") -> Path:
    """The weights file a config ``key`` (``method.init_from``, a merge's experts) names: a path,
    or a glob pattern (``*``, ``?``, ``[``) that must match exactly one file, e.g. the one run of a
    sweep whose directory name ends in a config hash. Raises :class:`ConfigError` naming the key and
    what was found instead."""
    where = f"{key}={spec}"
    if not any(c in spec for c in "*?["):
        path = Path(spec).expanduser()
        if path.is_dir():
            raise ConfigError(f"{where} is a directory; give the weights file in it (a run's method_weights.safetensors)")
        if not path.is_file():
            raise ConfigError(f"{where}: no such file. Give a run's method_weights.safetensors (or a glob pattern "
                              "matching exactly one); run the sweep that writes it first")
        return path
    matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec)) if os.path.isfile(m))
    if len(matches) != 1:
        found = ", ".join(str(m) for m in matches[:5]) + (" ..." if len(matches) > 5 else "")
        raise ConfigError(f"{where} matches {len(matches)} files{': ' + found if matches else ''}; it must match exactly "
                          "one" + (" (run the sweep that writes it first)" if not matches else
                                   ": give the path of the one to start from"))
    return matches[0]


@dataclass
class ClassificationTask:
    """What a classification benchmark tells a method: labels and evaluation languages."""
    labels: list[str]
    eval_languages: list[str]  # index space of the batch field ``lang``
    source_languages: list[str]


class ClassificationHead(nn.Module):
    """XLM-R's head: dropout → dense(d, d) → tanh → dropout → out_proj(d, labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(pooled)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(batch, length, d)`` over positions where ``mask`` is 1, summed in
    float32 (a bf16 sum over a long sequence loses digits); returns float32 ``(batch, d)``."""
    weights = mask.unsqueeze(-1).float()
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or Adafactor (fixed learning rate: no relative step, no parameter scaling)."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if cfg.name == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    raise ConfigError(f"method.optim.name={cfg.name!r} is not supported; choose adamw or adafactor")


def resolve_warmup(cfg: OptimConfig, total_steps: int, ratio: float | None = None) -> int:
    """Warmup length in optimiser steps: ``ratio`` (else ``cfg.warmup_ratio``) of ``total_steps``,
    rounded down (0.29 of 100 is 29, not the 28 a float product would floor to), or else
    ``cfg.warmup_steps``."""
    ratio = cfg.warmup_ratio if ratio is None else ratio
    return math.floor(ratio * total_steps + 1e-9) if ratio is not None else cfg.warmup_steps


def lr_lambda(cfg: OptimConfig, total_steps: int, warmup: int):
    """Multiplier of the base learning rate at optimiser step ``s`` (``warmup`` steps, then the schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "cosine_restarts":
            if progress >= 1.0:
                return 0.0
            return 0.5 * (1.0 + math.cos(math.pi * ((cfg.num_cycles * progress) % 1.0)))
        raise ConfigError(f"method.optim.schedule={cfg.schedule!r} is not supported; "
                          "choose constant, linear, cosine or cosine_restarts")

    return factor


def unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` on the CPU with each storage once (tied weights, e.g. a decoder's input embedding
    and ``lm_head``, are kept under their first name; loading either name restores both)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = value.detach().cpu().contiguous()
    return out


class MethodBase(pl.LightningModule):
    """What every method shares, whatever its task kind: the support checks the preflight runs,
    which parameters train, the optimiser and schedule, and checkpoints of trainable weights only.

    Subclasses set ``supported_tasks`` / ``supported_model_kinds``, may set ``trains = False``
    (the fit stage is skipped), and hold ``cfg`` (the method config), ``total_steps`` and
    ``warmup_ratio`` (a phase's override of ``method.optim``'s warmup).
    """

    name: ClassVar[str] = "method"  # set by METHODS.register to the family
    supported_tasks: ClassVar[tuple[str, ...]] = ()
    supported_model_kinds: ClassVar[tuple[str, ...]] = ()
    trains: ClassVar[bool] = True  # False: the fit stage is skipped (the model is tested as loaded)
    train_data_modes: ClassVar[tuple[str, ...]] = ()  # the train_data.mode values it trains with (none: no train_data)
    requires_train_data: ClassVar[bool] = False  # True: refused without train_data
    # set by the runner's fit stage from trainer.*: what a method under manual optimisation
    # (``automatic_optimization = False``) applies itself, since Lightning then refuses both
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    backbone_name: str

    # ------------------------------------------------------------ construction
    @classmethod
    def check_supported(cls, task_kind: str, model_kind: str) -> None:
        if task_kind not in cls.supported_tasks:
            raise ConfigError(f"method={cls.name} runs {' and '.join(cls.supported_tasks)} benchmarks, not {task_kind} "
                              f"ones (benchmark.task); choose another method= or benchmark=")
        if model_kind not in cls.supported_model_kinds:
            raise ConfigError(f"method={cls.name} supports model kinds {list(cls.supported_model_kinds)}, "
                              f"not {model_kind!r}; choose another model=")

    @classmethod
    def check_method_config(cls, cfg: MethodConfig) -> None:
        """Fail fast (in the preflight, and again at construction) on method settings this
        method cannot use; raises ConfigError naming the key."""

    def configure_trainable(self) -> None:
        """Set ``requires_grad``; the default trains backbone and head."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups; by default all trainable parameters, with no decay on biases/norms."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        return [{"params": decay, "weight_decay": self.cfg.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def enter_target_phase(self) -> None:
        """Called before tuning on one target language (``regime=sequential``); default: nothing."""

    def parameter_counts(self) -> dict[str, int]:
        trainable, total = count_parameters(self)
        return {"trainable": trainable, "total": total}

    def trainable_parameter_table(self) -> str:
        """Every trainable parameter as TSV lines ``name, shape, count`` (a header first; tied
        weights once, under their first name)."""
        rows = ["name\tshape\tcount"]
        rows += [f"{name}\t{'x'.join(map(str, p.shape))}\t{p.numel()}"
                 for name, p in self.named_parameters() if p.requires_grad]
        return "\n".join(rows) + "\n"

    def optimizer_step(self, *args, **kwargs) -> None:
        """Lightning's step, then the gradients freed at once (``set_to_none``): otherwise they stay
        alive through the next step's forward pass (one model's worth of memory for full fine-tuning)."""
        super().optimizer_step(*args, **kwargs)
        for optimizer in self.trainer.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameter_groups(), self.cfg.optim)
        warmup = resolve_warmup(self.cfg.optim, self.total_steps, self.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg.optim, self.total_steps, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------- checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of every parameter that trains (and every buffer outside the backbone)."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items()
                if k in trainable or not k.startswith("backbone.")}

    def reset_metrics(self) -> None:
        """(Re)build the metrics for ``self.task`` (after a phase changes it)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_dict().keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = set(self.trainable_state_dict()) - set(checkpoint["state_dict"])
        if missing:
            raise RuntimeError(f"checkpoint lacks trainable parameters {sorted(missing)[:5]}...; "
                               "it was written by another method or model")

    def save_trainable(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write trainable weights as safetensors (loadable with ``method.init_from=PATH``), atomically,
        with ``metadata`` added to the header."""
        from safetensors.torch import save_file

        from xlt_runner.fileio import atomic_path
        with atomic_path(path) as tmp:
            save_file(unshared(self.trainable_state_dict()), str(tmp),
                      metadata={"method": self.name, "backbone": self.backbone_name, **self.representation(),
                                **(metadata or {})})

    def restore_trainable(self, path: str | os.PathLike) -> None:
        """Load this run's own :meth:`save_trainable` output (the best weights of a fit) back into
        this module; every trainable tensor must be in the file."""
        from safetensors.torch import load_file
        state = load_file(str(path))
        missing = sorted(set(unshared(self.trainable_state_dict())) - set(state))
        if missing:
            raise RuntimeError(f"{path} lacks trainable tensors {missing[:5]}: it was written by another method "
                               "or model")
        self.load_state_dict(state, strict=False)

    def representation(self) -> dict[str, str]:
        """Settings the saved weights only make sense with (saved with them; loading checks them)."""
        return {}

    def load_trainable(self, path: str) -> None:
        """Load weights written by :meth:`save_trainable`; every trainable tensor must be present."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("method") not in (None, self.name):
            raise ConfigError(f"method.init_from={path} holds weights of method {meta.get('method')!r}, "
                              f"not {self.name!r}")
        for key, current in self.representation().items():
            if meta.get(key) not in (None, current):
                raise ConfigError(f"method.init_from={path} was trained with {key}={meta[key]!r}, but this run has "
                                  f"{key}={current!r}: its head would read another representation. Set "
                                  f"method.{key}={meta[key]} (see model.pooling for pool=model)")
        state = load_file(path)
        expected = unshared(self.trainable_state_dict())
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ConfigError(f"method.init_from={path} lacks {missing[:5]}")
        for k, v in state.items():
            if k in expected and expected[k].shape != v.shape:
                raise ConfigError(f"method.init_from={path}: {k} has shape {tuple(v.shape)}, "
                                  f"expected {tuple(expected[k].shape)} (another backbone?)")
        self.load_state_dict(state, strict=False)


class ClassificationMethod(MethodBase):
    """Backbone + pooled representation + XLM-R-style head, trained with cross-entropy.

    Subclasses set ``name`` and may override ``configure_trainable``, ``encode`` and
    ``parameter_groups``. ``test_results`` holds per-language metrics after a test run.
    """

    name: ClassVar[str] = "classification"  # set by METHODS.register to the family
    supported_tasks: ClassVar[tuple[str, ...]] = ("classification",)
    supported_model_kinds: ClassVar[tuple[str, ...]] = ("encoder",)
    poolings: ClassVar[tuple[str, ...]] = MODEL_POOLINGS  # what method.pool may name besides "model"

    def __init__(self, cfg: ClassificationMethodConfig, backbone: Backbone, task: ClassificationTask,
                 total_steps: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.total_steps = total_steps
        self.backbone_name = backbone.name
        self.backbone = backbone.model
        self.check_method_config(cfg)
        self.pooling = backbone.pooling if cfg.pool == "model" else cfg.pool
        self.warmup_ratio: float | None = None  # set for a phase (regime.target_warmup_ratio); else method.optim's
        self.head = ClassificationHead(backbone.hidden_size, len(task.labels), cfg.classifier_dropout)
        self.configure_trainable()
        self.backbone_frozen = not any(p.requires_grad for p in self.backbone.parameters())
        self.reset_metrics()
        self._nonfinite_rows: torch.Tensor | int = 0  # rows with non-finite logits in the current stage
        self.test_results: dict[str, dict[str, float]] = {}
        self.strict_loading = False  # checkpoints omit frozen parameters

    @classmethod
    def check_method_config(cls, cfg: ClassificationMethodConfig) -> None:
        """``method.pool``: ``model`` or one of :attr:`poolings`."""
        if cfg.pool != "model" and cfg.pool not in cls.poolings:
            raise ConfigError(f"method.pool={cfg.pool!r} is not valid for method={cls.name}; choose model "
                              f"(the backbone's model.pooling) or one of: {', '.join(cls.poolings)}")

    def reset_metrics(self) -> None:
        """(Re)build the per-language metrics for ``self.task``'s evaluation languages."""
        n_eval, n_labels = len(self.task.eval_languages), len(self.task.labels)
        device = self.device
        self.val_metric = PerLanguageClassification(n_eval, n_labels).to(device)
        self.test_metric = PerLanguageClassification(n_eval, n_labels).to(device)
        self._source_index = torch.tensor([self.task.eval_languages.index(l) for l in self.task.source_languages])

    def representation(self) -> dict[str, str]:
        """How the head's input is read (saved with the weights; loading checks it): the pooling."""
        return {"pool": self.pooling}

    # ------------------------------------------------------------------ forward
    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # a frozen backbone keeps its dropout off
        return self

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled representation ``(batch, hidden)`` per ``self.pooling``: the first position
        (``<s>``/``[CLS]``) or the mean over the attention-masked real tokens."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if self.pooling == "mean":
            return masked_mean(out.last_hidden_state, batch["attention_mask"])
        return out.last_hidden_state[:, 0]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # the float32 mean pooling meets a head held in bf16/fp16/fp64 under trainer.precision=*-true
        return self.head(self.encode(batch).to(self.head.dense.weight.dtype))

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"])
        if not torch.isfinite(loss):
            raise NonFiniteValueError(
                f"training loss is {loss.item()} at optimiser step {self.global_step} (batch {batch_idx}); "
                "lower method.optim.lr, enable trainer.gradient_clip_val, or use trainer.precision=32-true")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    # --------------------------------------------------------------- evaluation
    def _eval_update(self, metric: PerLanguageClassification, batch: dict[str, torch.Tensor]) -> None:
        """Score one batch, counting rows with non-finite logits (their argmax would be a silent
        class 0) for :meth:`_check_finite` at the end of the stage."""
        logits = self(batch)
        self._nonfinite_rows = self._nonfinite_rows + (~torch.isfinite(logits).all(dim=-1)).sum()
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
        metric.update(logits.argmax(-1), batch["labels"], batch["lang"], loss)

    def _check_finite(self, stage: str) -> None:
        """Fail the run, on every rank alike, if any rank saw non-finite logits in this stage."""
        bad = torch.as_tensor(self._nonfinite_rows, device=self.device)
        self._nonfinite_rows = 0
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if int(bad):
            raise NonFiniteValueError(
                f"{stage}: {int(bad)} examples have non-finite logits at optimiser step {self.global_step} "
                "(the weights hold NaN or inf); no result is recorded. Lower method.optim.lr, enable "
                "trainer.gradient_clip_val, or use trainer.precision=32-true")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_update(self.val_metric, batch)

    def on_validation_epoch_end(self) -> None:
        self._check_finite("validation")
        values = self.val_metric.per_language()
        self.val_metric.reset()
        idx = self._source_index.to(values["accuracy"].device)
        self.log("val/accuracy", values["accuracy"][idx].mean().float(), prog_bar=True, sync_dist=False)
        self.log("val/macro_f1", values["macro_f1"][idx].mean().float(), sync_dist=False)
        self.log("val/loss", values["loss"][idx].mean().float(), sync_dist=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_update(self.test_metric, batch)

    def on_test_epoch_end(self) -> None:
        self._check_finite("test")
        values = self.test_metric.per_language()
        self.test_metric.reset()
        results = {}
        for i, lang in enumerate(self.task.eval_languages):
            n = int(values["n"][i])
            if n:
                results[lang] = {"accuracy": float(values["accuracy"][i]), "macro_f1": float(values["macro_f1"][i]), "n": n}
        self.test_results = results
        if results:
            self.log("test/accuracy", float(np.mean([r["accuracy"] for r in results.values()])), sync_dist=False)

