"""Soft prompts on a frozen encoder: SPT, the Cross-Prompt Encoder (XPE) and DUAL.

Supports: classification benchmarks on encoder backbones (``model.kind=encoder``).

All three prepend ``T = prompt_length`` virtual token embeddings at the embedding layer
of the frozen backbone and train them with an XLM-R-style head:

* **SPT** (``method=spt``): ``T`` free embeddings (Lester et al.'s prompt tuning).
* **XPE** (``method=xpe``): a pseudo prompt of ``T`` embeddings passed token by token
  through a small shared MLP (the *prompt encoder*) whose output is the soft prompt.
* **DUAL** (``method=dual``): one budget ``T`` split into ``T - n_xpe`` SPT tokens
  followed by ``n_xpe = max(1, min(T - 1, int(T * xpe_ratio)))`` XPE tokens.

Wiring (see :meth:`SoftPromptMethod.encode`):

* Where the prompt goes (``prompt_position``): ``after_cls`` (default) gives
  ``<s> P_1..P_T text </s>``: the real ``<s>``/``[CLS]`` keeps position 0 and its
  pretrained position embedding, so the default pooling reads the same slot whatever
  ``T`` is. ``before_cls`` gives ``P_1..P_T <s> text </s>``, the layout of PEFT's
  prompt tuning that the XPE authors' code uses (with ``pool=first_virtual`` it is
  their setup exactly: PEFT's sequence-classification head reads position 0).
* What the head reads (``pool``): ``model`` (default) the backbone's ``model.pooling``;
  ``cls`` the real ``<s>``/``[CLS]`` token; ``first_virtual`` the first prompt position;
  ``mean`` the mean over real tokens (the prompt excluded).
* Learning rates: SPT embeddings at ``prompt_lr``; XPE's pseudo prompt at
  ``pseudo_prompt_lr`` (the authors' code trains it with the embedding rate, 5e-3, no
  weight decay; ``null`` puts it with the encoder and head, the paper text's reading);
  encoder and head at ``optim.lr``.
* The attention mask is extended with ones for the prompt; models with token type
  embeddings get explicit zeros. Position ids are the backbone's own (sequential
  from the start for ``inputs_embeds``; right padding keeps real tokens exact).
* Length: real tokens + prompt fit the backbone's usable positions
  (``max_position_embeddings``, minus ``padding_idx + 1`` for RoBERTa-style models
  whose positions start after the pad id: 512 for XLM-R). Text is truncated, never
  the prompt; a final special token (``</s>``/``[SEP]``) is kept at the end.

Inference: once the prompt module is in eval mode and gradients are off, the prompt
matrix is computed once and cached (keyed on the parameters' version counters and
storage, so any in-place update, ``load_state_dict`` or device move invalidates it;
every ``train()``/``eval()`` call drops it too, so each evaluation recomputes it once). Evaluation therefore never runs the prompt encoder
again. :meth:`save_trainable` writes ``prompt.final`` (the ``T x d`` prompt matrix)
next to the trainable tensors (SPT embeddings, pseudo prompt, encoder, head), so
``method.init_from=PATH`` restores a trained prompt on a fresh backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from xlt_runner.config import ClassificationMethodConfig, ConfigError
from xlt_runner.methods import METHODS
from xlt_runner.methods.base import ClassificationMethod, ClassificationTask, masked_mean
from xlt_runner.models import Backbone

PROMPT_POSITIONS = ("after_cls", "before_cls")
SOFT_PROMPT_POOLINGS = ("cls", "first_virtual", "mean")  # method.pool besides "model"
SPT_INITS = ("random", "vocab", "text")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
FINAL_PROMPT_KEY = "prompt.final"


# ------------------------------------------------------------------------- configs
@dataclass
class SoftPromptConfig(ClassificationMethodConfig):
    """Fields shared by every soft-prompt method. ``optim.lr`` / ``optim.weight_decay``
    apply to the head and (XPE) the prompt encoder; the pseudo prompt has its own rate
    (``pseudo_prompt_lr``) unless that is null."""
    prompt_length: int = 20  # T, virtual tokens in total
    prompt_position: str = "after_cls"  # after_cls | before_cls


@dataclass
class SptConfig(SoftPromptConfig):
    """SPT: free prompt embeddings with their own learning rate and weight decay."""
    name: str = "spt"
    family: str = "spt"
    init: str = "random"  # random (normal, init_std) | vocab (sampled vocabulary embeddings) | text
    init_text: Optional[str] = None  # for init=text: its token embeddings, repeated to T tokens
    init_std: float = 1.0  # std of the random init (1.0 = torch.nn.Embedding's, as in PEFT)
    prompt_lr: float = 5.0e-3  # learning rate of the SPT embeddings
    prompt_weight_decay: float = 0.0


@dataclass
class XpeConfig(SoftPromptConfig):
    """XPE: pseudo prompt -> shared MLP encoder -> soft prompt."""
    name: str = "xpe"
    family: str = "xpe"
    encoder_hidden_size: int = 256
    encoder_num_layers: int = 3  # Linear layers; 3 = d -> h -> h -> d
    encoder_activation: str = "relu"  # relu | gelu | tanh | silu
    encoder_dropout: float = 0.1
    target_phase: bool = False  # target-language tuning: encoder dropout 0
    pseudo_init_std: float = 1.0  # std of the pseudo prompt's normal init
    pseudo_prompt_lr: Optional[float] = 5.0e-3  # null: optim.lr and optim.weight_decay
    pseudo_prompt_weight_decay: float = 0.0


@dataclass
class DualConfig(XpeConfig, SptConfig):
    """DUAL: SPT tokens first, then ``n_xpe`` XPE tokens, within one budget T."""
    name: str = "dual"
    family: str = "dual"
    xpe_ratio: float = 0.7  # share of T given to XPE


def xpe_token_count(total: int, xpe_ratio: float) -> int:
    """XPE's share of a DUAL budget: ``max(1, min(T - 1, int(T * xpe_ratio)))``."""
    return max(1, min(total - 1, int(total * xpe_ratio)))


def _choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"method.{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


# ------------------------------------------------------------------------- modules
class PromptEncoder(nn.Module):
    """XPE's shared MLP applied to each pseudo-prompt token: ``Linear(d,h) → act →
    Dropout`` repeated, then ``Linear(h,d)``; no residual, no LayerNorm."""

    def __init__(self, dim: int, hidden_size: int, num_layers: int, activation: str, dropout: float) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"method.encoder_num_layers={num_layers} must be at least 1")
        _choice("encoder_activation", activation, tuple(ACTIVATIONS))
        layers: list[nn.Module] = []
        width = dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, pseudo_prompt: torch.Tensor) -> torch.Tensor:
        return self.mlp(pseudo_prompt)


class SoftPrompt(nn.Module):
    """The prompt matrix ``(T, d)``: ``spt`` rows (free), then ``encoder(pseudo)`` rows.

    Either part may be absent (SPT: no encoder; XPE: no free rows). Parameters are
    float32 whatever the backbone's dtype; the caller casts the output.
    """

    def __init__(self, spt: torch.Tensor | None, pseudo: torch.Tensor | None, encoder: PromptEncoder | None) -> None:
        super().__init__()
        self.spt = nn.Parameter(spt) if spt is not None else None
        self.pseudo = nn.Parameter(pseudo) if pseudo is not None else None
        self.encoder = encoder
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def length(self) -> int:
        return sum(p.shape[0] for p in (self.spt, self.pseudo) if p is not None)

    def compute(self) -> torch.Tensor:
        """The prompt matrix, always recomputed (runs the encoder)."""
        parts = []
        if self.spt is not None:
            parts.append(self.spt)
        if self.pseudo is not None:
            parts.append(self.encoder(self.pseudo))
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def _state_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.parameters())

    def forward(self) -> torch.Tensor:
        """The prompt matrix; cached when nothing can change it (eval mode, no grad)."""
        if self.encoder is None or self.training or torch.is_grad_enabled():
            return self.compute()
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            # Outside inference mode so the cached tensor is usable anywhere later.
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(self.pseudo.device.type, enabled=False):
                self._cache = (key, self.compute().detach())
        return self._cache[1]

    def train(self, mode: bool = True):
        self._cache = None  # recomputed once per evaluation, whatever changed the weights meanwhile
        return super().train(mode)


# ------------------------------------------------------------------------- methods
class SoftPromptMethod(ClassificationMethod):
    """Frozen backbone with a soft prompt at its embedding layer; prompt and head train.

    Subclasses define :meth:`build_prompt`. Parameter groups: SPT embeddings at
    ``method.prompt_lr`` / ``method.prompt_weight_decay``; the pseudo prompt at
    ``method.pseudo_prompt_lr`` / ``method.pseudo_prompt_weight_decay`` (when the rate is
    set); everything else that trains (prompt encoder, head, and the pseudo prompt when its
    rate is null) at ``method.optim.lr`` with ``method.optim.weight_decay`` on matrices
    and none on biases.
    """

    poolings: ClassVar[tuple[str, ...]] = SOFT_PROMPT_POOLINGS

    def __init__(self, cfg: SoftPromptConfig, backbone: Backbone, task: ClassificationTask, total_steps: int) -> None:
        super().__init__(cfg, backbone, task, total_steps)
        self.special_token_ids = torch.tensor(sorted(backbone.tokenizer.all_special_ids), dtype=torch.long)
        self.max_positions = usable_positions(self.backbone)
        if self.max_positions is not None and self.max_positions - cfg.prompt_length < 2:
            raise ConfigError(f"method.prompt_length={cfg.prompt_length} leaves no room for text: the backbone has "
                              f"{self.max_positions} usable positions; use a shorter prompt")
        self.uses_token_types = getattr(self.backbone.config, "type_vocab_size", 0) > 0
        self.prompt = self.build_prompt(backbone)
        if self.prompt.length != cfg.prompt_length:
            raise AssertionError(f"prompt has {self.prompt.length} tokens, expected {cfg.prompt_length}")

    @classmethod
    def check_method_config(cls, cfg: SoftPromptConfig) -> None:
        super().check_method_config(cfg)
        _choice("prompt_position", cfg.prompt_position, PROMPT_POSITIONS)
        if cfg.prompt_length < 1:
            raise ConfigError(f"method.prompt_length={cfg.prompt_length} must be at least 1")
        if getattr(cfg, "init", None) is not None:
            _choice("init", cfg.init, SPT_INITS)

    def configure_trainable(self) -> None:
        self.backbone.requires_grad_(False)

    def build_prompt(self, backbone: Backbone) -> SoftPrompt:
        raise NotImplementedError

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    # ------------------------------------------------------------ init helpers
    def _spt_init(self, cfg: SptConfig, n: int, backbone: Backbone) -> torch.Tensor:
        """``(n, d)`` initial SPT embeddings per ``cfg.init`` (float32, drawn from torch's RNG)."""
        _choice("init", cfg.init, SPT_INITS)
        weight = self.word_embeddings.weight.detach()
        if cfg.init == "random":
            return torch.randn(n, weight.shape[1]) * cfg.init_std
        if cfg.init == "vocab":
            special = set(backbone.tokenizer.all_special_ids)
            candidates = torch.tensor([i for i in range(weight.shape[0]) if i not in special])
            ids = candidates[torch.randint(len(candidates), (n,))]
        else:
            if not cfg.init_text:
                raise ConfigError("method.init=text needs method.init_text='some words' (their embeddings start the prompt)")
            token_ids = backbone.tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
            if not token_ids:
                raise ConfigError(f"method.init_text={cfg.init_text!r} tokenises to nothing; give a non-empty text")
            ids = torch.tensor([token_ids[i % len(token_ids)] for i in range(n)])
        return weight[ids].float().clone()

    # ----------------------------------------------------------------- forward
    def fit_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Truncate right-padded text so text + prompt fit the usable positions.

        Rows longer than the room left keep their first tokens and, if their last real
        token is special (``</s>``/``[SEP]``), end with it.
        """
        if self.max_positions is None:
            return input_ids, attention_mask
        room = self.max_positions - self.cfg.prompt_length
        if input_ids.shape[1] <= room:
            return input_ids, attention_mask
        lengths = attention_mask.sum(1)
        last = input_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        keep_last = (lengths > room) & torch.isin(last, self.special_token_ids.to(last.device))
        input_ids = input_ids[:, :room].clone()
        attention_mask = attention_mask[:, :room]
        input_ids[keep_last, room - 1] = last[keep_last]
        return input_ids, attention_mask

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled representation of ``<s> prompt text </s>`` (or ``prompt <s> text </s>``)."""
        input_ids, text_mask = self.fit_text(batch["input_ids"], batch["attention_mask"])
        embeds = self.word_embeddings(input_ids)
        n, t = embeds.shape[0], self.cfg.prompt_length
        prompt = self.prompt().to(embeds.dtype).unsqueeze(0).expand(n, -1, -1)
        cut = 1 if self.cfg.prompt_position == "after_cls" else 0
        prompt_mask = text_mask.new_ones(n, t)
        inputs_embeds = torch.cat([embeds[:, :cut], prompt, embeds[:, cut:]], dim=1)
        attention_mask = torch.cat([text_mask[:, :cut], prompt_mask, text_mask[:, cut:]], dim=1)
        extra = {"token_type_ids": torch.zeros_like(attention_mask)} if self.uses_token_types else {}
        hidden = self.backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0 if cut else t]
        if self.pooling == "first_virtual":
            return hidden[:, cut]
        real = torch.cat([text_mask[:, :cut], torch.zeros_like(prompt_mask), text_mask[:, cut:]], dim=1)
        return masked_mean(hidden, real)

    # ---------------------------------------------------------------- optimiser
    def parameter_groups(self) -> list[dict[str, Any]]:
        spt, pseudo = self.prompt.spt, self.prompt.pseudo
        groups = []
        if spt is not None:
            groups.append({"params": [spt], "lr": self.cfg.prompt_lr, "weight_decay": self.cfg.prompt_weight_decay})
        own_rate = pseudo is not None and self.cfg.pseudo_prompt_lr is not None
        if own_rate:
            groups.append({"params": [pseudo], "lr": self.cfg.pseudo_prompt_lr,
                           "weight_decay": self.cfg.pseudo_prompt_weight_decay})
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad and p is not spt and not (own_rate and p is pseudo):
                (no_decay if p.ndim < 2 else decay).append(p)
        groups += [{"params": decay, "weight_decay": self.cfg.optim.weight_decay},
                   {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    # -------------------------------------------------------------- checkpoints
    def final_prompt(self) -> torch.Tensor:
        """The ``(T, d)`` prompt as evaluation uses it (encoder in eval mode, no dropout)."""
        was_training = self.prompt.training
        self.prompt.eval()
        with torch.no_grad():
            matrix = self.prompt().detach().clone()
        self.prompt.train(was_training)
        return matrix

    def save_trainable(self, path: str, metadata: dict[str, str] | None = None) -> None:
        """Trainable tensors plus ``prompt.final``, the prompt matrix, as safetensors (``metadata``
        added to the header)."""
        from safetensors.torch import save_file

        from xlt_runner.fileio import atomic_path
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        state[FINAL_PROMPT_KEY] = self.final_prompt().float().cpu().contiguous()
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"method": self.name, "backbone": self.backbone_name,
                                                 "prompt_length": str(self.cfg.prompt_length), **self.representation(),
                                                 **(metadata or {})})

    def representation(self) -> dict[str, str]:
        return {**super().representation(), "prompt_position": self.cfg.prompt_position}

    def load_trainable(self, path: str) -> None:
        """Load :meth:`save_trainable` output and check the rebuilt prompt equals ``prompt.final``."""
        from safetensors.torch import load_file
        super().load_trainable(path)
        saved = load_file(path).get(FINAL_PROMPT_KEY)
        if saved is not None:
            rebuilt = self.final_prompt().float().cpu()
            if saved.shape != rebuilt.shape or not torch.allclose(saved, rebuilt, atol=1e-5, rtol=1e-4):
                raise ConfigError(f"method.init_from={path}: the prompt rebuilt from its weights differs from the "
                                  f"saved {FINAL_PROMPT_KEY}; the file was written with other method settings "
                                  "(prompt_length, encoder_*, xpe_ratio)")


def usable_positions(model: nn.Module) -> int | None:
    """Tokens a sequence may have: ``max_position_embeddings`` minus the RoBERTa-style
    offset (``padding_idx + 1`` when the embeddings count positions after the pad id).
    ``None`` when the model has no absolute position limit."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None or getattr(model.config, "position_embedding_type", "absolute") != "absolute":
        return None
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return limit - (padding_idx + 1 if padding_idx is not None else 0)


@METHODS.register("spt", SptConfig)
class SoftPromptTuning(SoftPromptMethod):
    """SPT: ``prompt_length`` free embeddings."""

    def build_prompt(self, backbone: Backbone) -> SoftPrompt:
        return SoftPrompt(self._spt_init(self.cfg, self.cfg.prompt_length, backbone), None, None)


@METHODS.register("xpe", XpeConfig)
class CrossPromptEncoder(SoftPromptMethod):
    """XPE: the whole prompt comes from the shared prompt encoder."""

    def xpe_length(self) -> int:
        return self.cfg.prompt_length

    def build_prompt(self, backbone: Backbone) -> SoftPrompt:
        cfg = self.cfg
        n_xpe = self.xpe_length()
        n_spt = cfg.prompt_length - n_xpe
        dim = self.word_embeddings.weight.shape[1]
        encoder = PromptEncoder(dim, cfg.encoder_hidden_size, cfg.encoder_num_layers, cfg.encoder_activation,
                                0.0 if cfg.target_phase else cfg.encoder_dropout)
        spt = self._spt_init(cfg, n_spt, backbone) if n_spt else None
        return SoftPrompt(spt, torch.randn(n_xpe, dim) * cfg.pseudo_init_std, encoder)

    def enter_target_phase(self) -> None:
        """Target-language tuning (``regime=sequential``): the prompt encoder's dropout is 0."""
        for module in self.prompt.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0


@METHODS.register("dual", DualConfig)
class DualPrompt(CrossPromptEncoder):
    """DUAL: ``T - n_xpe`` SPT tokens, then ``n_xpe`` XPE tokens."""

    @classmethod
    def check_method_config(cls, cfg: DualConfig) -> None:
        super().check_method_config(cfg)
        if cfg.prompt_length < 2:
            raise ConfigError(f"method=dual needs method.prompt_length >= 2 (one SPT and one XPE token), "
                              f"not {cfg.prompt_length}")
        if not 0.0 < cfg.xpe_ratio < 1.0:
            raise ConfigError(f"method.xpe_ratio={cfg.xpe_ratio} must be between 0 and 1 (exclusive); "
                              "use method=spt or method=xpe for all-SPT or all-XPE prompts")

    def xpe_length(self) -> int:
        return xpe_token_count(self.cfg.prompt_length, self.cfg.xpe_ratio)
