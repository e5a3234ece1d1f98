"""Decoder methods for generation benchmarks: ``prompting``, ``sft``, ``partial_layers`` and
``lora`` on decoders.

Supports: ``benchmark.task=generation`` on ``model.kind=decoder``. Training is supervised
fine-tuning on prompt + answer with the loss on the answer tokens only (mean over the batch's
answer tokens); the language-model head runs only at the positions that predict an answer token
(a 49k-entry vocabulary times every prompt position is most of a short-answer step otherwise).
Validation is the teacher-forced loss per source language (``val/loss``: the macro mean, the
CoCo-CoLa protocol's checkpoint criterion). Testing generates greedily in length-sorted batches
with per-row early exit (:func:`xlt_runner.generation.generate_greedy`), scores each answer
with the task kind's scoring (QA answers or math numbers: ``task.scoring``) and keeps one prediction row per
question in ``test_predictions``.

``method.init_from`` takes a previous decoder run's ``method_weights.safetensors`` (e.g. the
English-tuned model) for every decoder method; LoRA loads it into the frozen base weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from xlt_runner.config import ConfigError, MethodConfig, OptimConfig
from xlt_runner.methods import METHODS
from xlt_runner.methods.base import MethodBase, NonFiniteValueError
from xlt_runner.methods.finetune import LoraConfig, apply_lora
from xlt_runner.models import Backbone
from xlt_runner.models.layers import LayerSelection, check_selection, select_parameters


@dataclass
class PromptingConfig(MethodConfig):
    """The model as it is: no training (the "pretrained model" row of every paper in this family)."""
    name: str = "prompting"
    family: str = "prompting"


@dataclass
class SftConfig(MethodConfig):
    """Full supervised fine-tuning: every parameter trains (AdamW, warmup, schedule, clipping by
    ``trainer.gradient_clip_val``). ``export_pretrained``: also write the tested weights as a
    standard transformers folder ``<run_dir>/model`` (``from_pretrained`` loads it elsewhere)."""
    name: str = "sft"
    family: str = "sft"
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, warmup_ratio=0.03, schedule="linear"))
    export_pretrained: bool = False


@dataclass
class PartialLayersConfig(SftConfig):
    """Fine-tuning of the parameters ``trainable`` selects (:mod:`xlt_runner.models.layers`: layer
    ranges, first/last parts of the depth, module types, embeddings / lm_head / final norm), the
    rest frozen; the optimiser otherwise as ``sft``. ``gradient_checkpointing``: recompute the
    trainable layers' activations in the backward pass instead of keeping them."""
    name: str = "partial_layers"
    family: str = "partial_layers"
    trainable: LayerSelection = field(default_factory=lambda: LayerSelection(last=0.25))
    gradient_checkpointing: bool = False


class DecoderMethod(MethodBase):
    """A causal LM answering questions. ``backbone`` is the ``AutoModelForCausalLM``."""

    supported_tasks: ClassVar[tuple[str, ...]] = ("generation",)  # and the task kinds run by its methods (math)
    supported_model_kinds: ClassVar[tuple[str, ...]] = ("decoder",)
    train_data_modes: ClassVar[tuple[str, ...]] = ("task", "language", "mix")

    def __init__(self, cfg: MethodConfig, backbone: Backbone, task, total_steps: int) -> None:
        super().__init__()
        self.check_method_config(cfg)
        self.cfg = cfg
        self.task = task
        self.total_steps = total_steps
        self.warmup_ratio: float | None = None
        self.backbone_name = backbone.name
        self.backbone = backbone.model
        self.tokenizer = backbone.tokenizer
        self.configure_trainable()
        self.strict_loading = False  # checkpoints omit frozen parameters
        self.test_results: dict[str, dict[str, Any]] = {}
        self.test_predictions: list[dict[str, Any]] = []
        self._identifier = None
        self.reset_metrics()

    def reset_metrics(self) -> None:
        from xlt_runner.metrics.generation import PerLanguageMean
        n = len(self.task.eval_languages)
        self.val_loss = PerLanguageMean(n).to(self.device)
        self.val_loss_by_dataset = PerLanguageMean(2).to(self.device)  # train_data runs: task, language
        self.test_metric = self.task.scoring.metric(n).to(self.device)
        self._source_index = torch.tensor([self.task.eval_languages.index(l) for l in self.task.source_languages])
        self._predictions: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- training
    def answer_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy (nats, float32) of each row's answer tokens and their number, both
        ``(batch,)``: the LM head runs only where the next token is an answer token."""
        labels = batch["labels"][:, 1:]
        answer = labels != -100
        hidden = self.backbone.get_decoder()(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"]).last_hidden_state
        logits = self.backbone.get_output_embeddings()(hidden[:, :-1][answer]).float()
        cap = getattr(self.backbone.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        token_loss = nn.functional.cross_entropy(logits, labels[answer], reduction="none")
        rows = answer.nonzero()[:, 0]
        summed = torch.zeros(labels.shape[0], device=token_loss.device).index_add(0, rows, token_loss)
        return summed, answer.sum(1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        summed, count = self.answer_losses(batch)
        loss = summed.sum() / count.sum().clamp(min=1)
        if not torch.isfinite(loss):
            raise NonFiniteValueError(
                f"training loss is {loss.item()} at optimiser step {self.global_step} (batch {batch_idx}); "
                "lower method.optim.lr, enable trainer.gradient_clip_val, or use trainer.precision=32-true")
        self.log("train/loss", loss, prog_bar=True, batch_size=int(count.sum()))
        return loss

    # --------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        summed, count = self.answer_losses(batch)
        self.val_loss.update(batch["lang"], summed / count.clamp(min=1))
        if "dataset" in batch:
            self.val_loss_by_dataset.update(batch["dataset"], summed / count.clamp(min=1))

    def on_validation_epoch_end(self) -> None:
        per_language = self.val_loss.per_language()
        self.val_loss.reset()
        loss = per_language[self._source_index.to(per_language.device)].mean()
        if not torch.isfinite(loss):
            raise NonFiniteValueError(f"validation loss is {float(loss)} at optimiser step {self.global_step}; "
                                      "no result is recorded. Lower method.optim.lr or use trainer.precision=32-true")
        self.log("val/loss", loss.float(), prog_bar=True, sync_dist=False)
        if self.task.train_roles:
            by_dataset = self.val_loss_by_dataset.per_language()
            self.val_loss_by_dataset.reset()
            for i, role in enumerate(("task", "language")):
                if role in self.task.train_roles:
                    self.log(f"val/loss_{role}", by_dataset[i].float(), sync_dist=False)

    # --------------------------------------------------------------------- test
    @property
    def identifier(self):
        if self._identifier is None:
            from xlt_runner.metrics.language_id import build_identifier
            self._identifier = build_identifier(self.task.language_identifier)
        return self._identifier

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        from xlt_runner.generation import generate_greedy
        outputs = generate_greedy(self.backbone, self.tokenizer, batch["input_ids"], batch["attention_mask"],
                                  max_new_tokens=self.task.max_new_tokens, stop_strings=self.task.stop_strings,
                                  eos_token_ids=self.task.stop_token_ids)
        scores = []
        for index, output in zip(batch["index"].tolist(), outputs):
            example = self.task.examples[index]
            score = self.task.scoring.score(output.text, example.references, example.lang, self.identifier)
            scores.append(score)
            self._predictions.append({"id": example.id, "lang": example.lang, "prompt": example.prompt,
                                      "prediction": output.text, "references": list(example.references),
                                      "scores": score, "new_tokens": output.num_new_tokens,
                                      "stop_reason": output.stop_reason})
        self.test_metric.update_from_scores(batch["lang"], scores)

    def on_test_epoch_end(self) -> None:
        values = self.test_metric.per_language()
        self.test_metric.reset()
        predictions = self._predictions
        self._predictions = []
        if self.trainer.world_size > 1:  # every rank's rows, on every rank
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = [row for rows in gathered for row in rows]
        order = {(e.lang, e.id): i for i, e in enumerate(self.task.examples)}
        self.test_predictions = sorted(predictions, key=lambda row: order[(row["lang"], row["id"])])
        results = self.task.scoring.results(values, self.task.eval_languages)
        self.test_results = results

    # -------------------------------------------------------------- checkpoints
    def load_trainable(self, path: str) -> None:
        """Load a decoder run's saved weights (``method_weights.safetensors``) into this model: every
        tensor in the file must exist here with the same shape (ConfigError otherwise). Under LoRA
        the file's plain weights go into the frozen base layers."""
        from safetensors.torch import load_file
        state = load_file(path)
        own = self.state_dict()
        mapped = {self._own_key(k, own): v for k, v in state.items()}
        unknown = sorted(k for k, own_key in zip(state, mapped) if own_key not in own)
        if unknown:
            raise ConfigError(f"method.init_from={path} holds tensors this model lacks, e.g. {unknown[:3]}: it was "
                              f"written for another model or method")
        for key, value in mapped.items():
            if own[key].shape != value.shape:
                raise ConfigError(f"method.init_from={path}: {key} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(own[key].shape)} (another model?)")
        self.load_state_dict(mapped, strict=False)

    def _own_key(self, key: str, own: dict) -> str:
        return key

    def export_pretrained(self, directory: Path) -> None:
        """The weights as a standard transformers folder (``save_pretrained``) with the tokenizer."""
        model = self.backbone.merge_and_unload() if hasattr(self.backbone, "merge_and_unload") else self.backbone
        model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))


@METHODS.register("prompting", PromptingConfig)
class Prompting(DecoderMethod):
    """The decoder as loaded (or from ``method.init_from``); nothing trains."""
    trains = False

    def configure_trainable(self) -> None:
        self.backbone.requires_grad_(False)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {}


@METHODS.register("sft", SftConfig)
class SupervisedFineTuning(DecoderMethod):
    """Every parameter of the decoder trains."""

    def configure_trainable(self) -> None:
        self.backbone.requires_grad_(True)


@METHODS.register("partial_layers", PartialLayersConfig)
class PartialLayers(DecoderMethod):
    """Only the parameters ``method.trainable`` selects train (CoCo-CoLa's final-layer tuning).

    Cost: frozen parameters get no gradient and no optimiser state (the optimiser sees only
    trainable ones); below the lowest trainable layer no input requires a gradient, so autograd
    records nothing there and keeps none of those layers' activations (tested); with
    ``gradient_checkpointing`` the trainable layers recompute theirs in the backward pass.
    """

    @classmethod
    def check_method_config(cls, cfg: PartialLayersConfig) -> None:
        check_selection(cfg.trainable, "method.trainable")

    def configure_trainable(self) -> None:
        chosen = set(select_parameters(self.backbone, self.cfg.trainable))
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name in chosen)
        if self.cfg.gradient_checkpointing:
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


@METHODS.register("lora:generation")
class DecoderLora(DecoderMethod):
    """LoRA adapters (peft) on the decoder's ``target_modules`` (default ``q_proj``/``v_proj``)."""

    @classmethod
    def check_method_config(cls, cfg: LoraConfig) -> None:
        if cfg.r < 1:
            raise ConfigError(f"method.r={cfg.r} must be at least 1")

    def configure_trainable(self) -> None:
        self.backbone = apply_lora(self.backbone, self.cfg)

    def _own_key(self, key: str, own: dict) -> str:
        """A plain weight's key inside the peft wrapper: ``backbone.base_model.model.<rest>``, with
        ``.base_layer`` before the parameter name of a wrapped linear layer."""
        if key in own:  # a LoRA run's own keys (adapters, wrapped weights)
            return key
        rest = key.removeprefix("backbone.")
        wrapped = f"backbone.base_model.model.{rest}"
        module, _, param = wrapped.rpartition(".")
        based = f"{module}.base_layer.{param}"
        return based if based in own else wrapped

