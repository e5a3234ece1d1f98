"""Run identity: a stable id derived from the resolved config.

Two configs that would train and evaluate the same thing get the same id, whatever
their output paths, logging or sweep name, so a relaunched sweep finds its finished
runs. The id names the run's output directory and its wandb run.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Top-level keys that do not change what a run computes.
NON_IDENTITY_KEYS = ("hydra", "paths", "logger", "overwrite", "sweep_name", "experiment_name")
#: Nested keys that do not change what a run computes (dotted paths).
#: Top-level sections added after runs were recorded: absent from the identity while unset, so
#: the ids of earlier runs (and of runs that do not use them) stay what they were.
OPTIONAL_SECTIONS = ("train_data",)
NON_IDENTITY_PATHS = ("benchmark.data_dir", "benchmark.num_workers", "trainer.enable_progress_bar",
                      "trainer.log_every_n_steps", "trainer.resume_checkpoint_every_validation",
                      "method.cache")


def identity_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    """The part of a config that determines a run's results, resolved to plain data."""
    if isinstance(cfg, DictConfig):
        node = {k: cfg._get_node(k) for k in cfg.keys() if k not in NON_IDENTITY_KEYS}
        data = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig)
                else cfg[k] for k, v in node.items()}
    else:
        data = {k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}
    data = json.loads(json.dumps(data, default=str))
    for key in OPTIONAL_SECTIONS:
        if data.get(key, 0) is None:
            del data[key]
    for dotted in NON_IDENTITY_PATHS:
        *parents, leaf = dotted.split(".")
        sub = data
        for p in parents:
            sub = sub.get(p, {}) if isinstance(sub, dict) else {}
        if isinstance(sub, dict):
            sub.pop(leaf, None)
    return data


def run_id(cfg: DictConfig | dict) -> str:
    """``<method>-<model>-<languages>-s<seed>-<10 hex of sha1>``: readable and stable."""
    data = identity_dict(cfg)
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    def name(group: str) -> str:
        value = data.get(group, {})
        return str(value.get("name", group)) if isinstance(value, dict) else str(value)
    return f"{name('method')}-{name('model')}-{name('languages')}-s{data.get('seed', 0)}-{digest}"


def _run_id_resolver(*, _root_: DictConfig) -> str:
    return run_id(_root_)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id_resolver, use_cache=False)


register_resolvers()
