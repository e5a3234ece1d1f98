"""Parameter-partition SFT of decoders (Bandarkar et al., MRL 2025): ``partition_sft`` (simultaneous)
and ``partial_sft`` (one partition, the separate "experts" that Layer-Swapping merges).

Supports: decoders on generation and math benchmarks with ``train_data`` (two SFT datasets,
:mod:`xlt_runner.data.sft_data`). Partitions are named disjoint parameter sets in the layer grammar
of :mod:`xlt_runner.models.layers` (presets ``conf/partition/``); what no partition covers is
frozen. ``method.dataset_partitions`` says which partition each dataset trains (``task -> math``,
``language -> language``).

``partition_sft`` (``train_data.mode=alternate``): optimiser step ``s`` takes its
``trainer.accumulate_grad_batches`` batches from one dataset (the data module alternates every
``train_data.steps_per_switch`` steps) and updates only that dataset's partition, with its own
AdamW state. Lightning's manual optimisation: during a step only the active partition requires a
gradient (``toggle_optimizer``), so the other gets no gradient; its parameters, moments and step
count stay bitwise unchanged (tested). One learning-rate schedule over all steps (the rate of step ``s`` is
set on the active optimiser before it steps); gradients of
the active partition clipped to ``trainer.gradient_clip_val`` (norm); training loss logged per
dataset. A checkpoint holds both optimisers, both schedulers and the data position, so a resumed
run continues in the same phase. ``method.lora``: LoRA adapters (peft) instead of the weights,
each adapter in the partition of the weight it adapts, toggled the same way.

``partial_sft``: ``method.partition``'s parameters train on the one dataset of
``train_data.mode`` (``task`` or ``language``); everything else stays frozen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from xlt_runner.config import ConfigError
from xlt_runner.methods import METHODS
from xlt_runner.methods.base import NonFiniteValueError, build_optimizer, lr_lambda, resolve_warmup
from xlt_runner.methods.decoder import DecoderMethod, SftConfig
from xlt_runner.methods.finetune import apply_lora
from xlt_runner.models.layers import (LayerSelection, ParameterPartitions, check_partitions, partitions_of,
                                      select_partitions)


@dataclass
class LoraSettings:
    """LoRA adapters for ``partition_sft``: rank, scaling, dropout and the adapted linear layers
    (null: the attention query and value projections)."""
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Optional[list[str]] = None


@dataclass
class PartitionSftConfig(SftConfig):
    """Simultaneous partition SFT. ``partitions``: name -> selections (a ``conf/partition`` preset);
    ``dataset_partitions``: dataset (task | language) -> the partition it trains; ``lora``: adapters
    instead of full weights (null: full weights)."""
    name: str = "partition_sft"
    family: str = "partition_sft"
    partitions: dict[str, list[LayerSelection]] = field(default_factory=dict)
    dataset_partitions: dict[str, str] = field(default_factory=lambda: {"task": "math", "language": "language"})
    lora: Optional[LoraSettings] = None


@dataclass
class PartialSftConfig(SftConfig):
    """One partition (``partition``, a name of ``partitions``) trains; the rest is frozen."""
    name: str = "partial_sft"
    family: str = "partial_sft"
    partitions: dict[str, list[LayerSelection]] = field(default_factory=dict)
    partition: str = "math"


def _check_partition_names(cfg, wanted: list[str]) -> None:
    check_partitions(partitions_of(cfg))
    for name in wanted:
        if name not in cfg.partitions:
            raise ConfigError(f"method names partition {name!r}, but method.partitions has "
                              f"{', '.join(cfg.partitions)}; choose one of those")


@METHODS.register("partial_sft", PartialSftConfig)
class PartialSft(DecoderMethod):
    """The parameters of one partition train (on ``train_data``'s one dataset); the rest is frozen."""
    train_data_modes: ClassVar[tuple[str, ...]] = ("task", "language")
    requires_train_data: ClassVar[bool] = True

    @classmethod
    def check_method_config(cls, cfg: PartialSftConfig) -> None:
        _check_partition_names(cfg, [cfg.partition])

    def configure_trainable(self) -> None:
        self.partitions = select_partitions(self.backbone, partitions_of(self.cfg))
        chosen = set(self.partitions.members[self.cfg.partition])
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name in chosen)


@METHODS.register("partition_sft", PartitionSftConfig)
class PartitionSft(DecoderMethod):
    """Each optimiser step updates one partition from one dataset; two independent AdamW states."""
    train_data_modes: ClassVar[tuple[str, ...]] = ("alternate",)
    requires_train_data: ClassVar[bool] = True

    @classmethod
    def check_method_config(cls, cfg: PartitionSftConfig) -> None:
        from xlt_runner.data.sft_data import ROLES
        if sorted(cfg.dataset_partitions) != sorted(ROLES):
            raise ConfigError(f"method.dataset_partitions={dict(cfg.dataset_partitions)} must name the partition of "
                              f"each dataset: {', '.join(ROLES)}")
        wanted = [cfg.dataset_partitions[role] for role in ROLES]
        if len(set(wanted)) != len(wanted):
            raise ConfigError(f"method.dataset_partitions={dict(cfg.dataset_partitions)} gives both datasets the "
                              "same partition; use method=sft with train_data.mode=mix for that")
        _check_partition_names(cfg, wanted)
        if cfg.lora is not None and cfg.lora.r < 1:
            raise ConfigError(f"method.lora.r={cfg.lora.r} must be at least 1")
        if cfg.optim.name != "adamw":
            raise ConfigError(f"method.optim.name={cfg.optim.name}: partition_sft keeps one AdamW state per "
                              "partition; use adamw")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    # ---------------------------------------------------------------- parameters
    def configure_trainable(self) -> None:
        """Resolve the partitions on the plain model; under LoRA, wrap it and give each adapter
        tensor the partition of the weight it adapts (adapters of uncovered weights are frozen)."""
        from xlt_runner.data.sft_data import ROLES
        partitions = select_partitions(self.backbone, partitions_of(self.cfg))
        owner = {f"backbone.{name}": part for part, names in partitions.members.items() for name in names}
        if self.cfg.lora is not None:
            self.backbone = apply_lora(self.backbone, self.cfg.lora)
            owner = self._adapter_owners(owner)
        self.role_parameters: dict[str, list[str]] = {}
        for role in ROLES:
            part = self.cfg.dataset_partitions[role]
            self.role_parameters[role] = [n for n, _ in self.named_parameters() if owner.get(n) == part]
            if not self.role_parameters[role]:
                raise ConfigError(f"partition {part!r} (the {role} dataset's) holds no trainable tensor"
                                  + (" under LoRA: no adapted module lies in it" if self.cfg.lora else ""))
        self.partition_table = ParameterPartitions(
            members={self.cfg.dataset_partitions[r]: self.role_parameters[r] for r in ROLES},
            uncovered=[n for n, _ in self.named_parameters() if all(n not in v for v in self.role_parameters.values())])
        trainable = {n for names in self.role_parameters.values() for n in names}
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def _adapter_owners(self, owner: dict[str, str]) -> dict[str, str]:
        """Adapter tensor name (as this module names it) -> the partition of the weight it adapts."""
        owners = {}
        for name, _ in self.named_parameters():
            if ".lora_" not in name:
                continue
            module = name.split(".lora_")[0].replace("backbone.base_model.model.", "backbone.", 1)
            part = owner.get(f"{module}.weight")
            if part is not None:
                owners[name] = part
        return owners

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every partition's tensors, whichever one is active (``requires_grad`` changes during a step)."""
        keep = {n for names in self.role_parameters.values() for n in names}
        return {k: v for k, v in self.state_dict().items() if k in keep or not k.startswith("backbone.")}

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        sizes = dict((n, p.numel()) for n, p in self.named_parameters())
        counts.update({f"partition_{self.cfg.dataset_partitions[r]}": sum(sizes[n] for n in names)
                       for r, names in self.role_parameters.items()})
        return counts

    # ---------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        """One AdamW per dataset's partition, in :data:`ROLES` order. The learning rate is set
        before each step from the one schedule of the global step (:meth:`learning_rate`), so it
        depends on nothing but the step count, on resume too."""
        from xlt_runner.data.sft_data import ROLES
        params = dict(self.named_parameters())
        optimizers = []
        self._lr_factor = lr_lambda(self.cfg.optim, self.total_steps,
                                    resolve_warmup(self.cfg.optim, self.total_steps, self.warmup_ratio))
        for role in ROLES:
            names = self.role_parameters[role]
            decay = [params[n] for n in names if params[n].ndim >= 2]
            no_decay = [params[n] for n in names if params[n].ndim < 2]
            optimizer = build_optimizer([{"params": decay, "weight_decay": self.cfg.optim.weight_decay},
                                         {"params": no_decay, "weight_decay": 0.0}], self.cfg.optim)
            optimizers.append(optimizer)
        return optimizers

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based), whichever partition it updates."""
        return self.cfg.optim.lr * self._lr_factor(step)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One batch of the current step's dataset; the step's last batch steps that partition's
        optimiser. Returns the batch's loss (detached: for callbacks; the backward pass is done)."""
        from xlt_runner.data.sft_data import ROLES
        datamodule = self.trainer.datamodule
        k = datamodule.training_batches_taken - 1  # this batch's number in the run (resumption included)
        part, _ = datamodule.train_sampler.position(k)
        roles = batch["dataset"].unique().tolist()
        if roles != [part]:
            raise RuntimeError(f"batch {k} holds rows of datasets {roles}, but step {k // self.accumulate_grad_batches} belongs "
                               f"to dataset {part} ({ROLES[part]}): the data order and the alternation disagree")
        role = ROLES[part]
        optimizer = self.optimizers()[part]
        accumulate = self.accumulate_grad_batches
        micro = k % accumulate
        if micro == 0:
            self.toggle_optimizer(optimizer)  # only this partition requires a gradient until the step
        summed, count = self.answer_losses(batch)
        loss = summed.sum() / count.sum().clamp(min=1)
        if not torch.isfinite(loss):
            raise NonFiniteValueError(f"training loss ({role} data) is {loss.item()} at optimiser step "
                                      f"{self.global_step}; lower method.optim.lr or use trainer.precision=32-true")
        self.manual_backward(loss / accumulate)
        self.log(f"train/loss_{role}", loss, prog_bar=True, batch_size=int(count.sum()))
        if micro == accumulate - 1:
            if self.gradient_clip_val:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate(self.global_step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.untoggle_optimizer(optimizer)
        return loss.detach()
