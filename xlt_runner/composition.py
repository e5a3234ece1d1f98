"""Config composition for sweeps: each distinct *shape* of sweep point is composed once.

Hydra composes every job of a multirun from scratch (defaults tree, YAML files,
structured schemas, merges), twice per job with the basic sweeper: once to validate
the batch and once to launch it. That is about 100 ms per job for this project's
config, most of it identical work: ``seed=0..499`` changes one value, not the tree.

``CachingConfigLoader`` is Hydra's ``ConfigLoaderImpl`` with a cache keyed by a sweep
point's *shape*: its config-group choices, its ``hydra.*`` and non-scalar overrides
verbatim, and the keys (not the values) of its plain scalar overrides. A cache hit
deep-copies the composed config and re-applies the scalar overrides in their order with
Hydra's own ``_apply_overrides_to_config``, then rewrites the fields Hydra derives from
the override list (``hydra.overrides.*``, ``hydra.job.override_dirname``). The result
equals a fresh composition (tests/test_composition.py checks this field by field).
Overrides that change structure (``+key``, ``++key``, ``~key``) or the search path are
never cached: they take Hydra's path.

Users get it through the ``hydra/sweeper=xlt`` sweeper (the default in conf/config.yaml,
see ``hydra_plugins/xlt_runner_sweeper``); ``xlt-run``'s preflight uses it too.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent / "conf"
_SCALARS = (str, int, float, bool, type(None))


class _Template:
    """A composed config and the lengths of its override lists before this point's own."""

    def __init__(self, cfg: DictConfig, n_hydra: int, n_task: int) -> None:
        self.cfg = copy.deepcopy(cfg)
        self.hydra_base = list(cfg.hydra.overrides.hydra)[: len(cfg.hydra.overrides.hydra) - n_hydra]
        self.task_base = list(cfg.hydra.overrides.task)[: len(cfg.hydra.overrides.task) - n_task]


class CachingConfigLoader(ConfigLoaderImpl):
    """``ConfigLoaderImpl`` that reuses the composition of a sweep point's shape (see module doc)."""

    def __init__(self, config_search_path: Any) -> None:
        super().__init__(config_search_path=config_search_path)
        self._templates: dict[tuple, _Template] = {}
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        """Pickled without the cache: submitit ships the launcher, and with it this loader,
        to every job, which composes only its own point."""
        return {**self.__dict__, "_templates": {}}

    def _shape(self, config_name: Optional[str], parsed: list[Override], run_mode: RunMode) -> Optional[tuple]:
        """The cache key of an override list, or None if it must not be cached: per override,
        ``("group", line)``, ``("fixed", line)`` (``hydra.*``, non-scalar) or ``("scalar", key)``."""
        items: list[tuple[str, str]] = []
        for o in parsed:
            if o.is_sweep_override() or o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None:
                return None
            key = o.key_or_group
            if key.startswith("hydra.searchpath"):
                return None
            if self.repository.group_exists(key):
                items.append(("group", str(o.input_line)))
            elif key.startswith("hydra") or not isinstance(o.value(), _SCALARS):
                items.append(("fixed", str(o.input_line)))
            else:
                items.append(("scalar", key))
        return (config_name, run_mode, *items)

    def load_configuration(self, config_name: Optional[str], overrides: list[str], run_mode: RunMode,
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> DictConfig:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        shape = self._shape(config_name, parsed, run_mode)
        template = self._templates.get(shape) if shape is not None else None
        if template is None:
            self.misses += 1
            cfg = super().load_configuration(config_name=config_name, overrides=overrides, run_mode=run_mode,
                                             from_shell=from_shell, validate_sweep_overrides=validate_sweep_overrides)
            if shape is not None:
                n_hydra = sum(o.is_hydra_override() for o in parsed)
                self._templates[shape] = _Template(cfg, n_hydra, len(parsed) - n_hydra)
            return cfg
        self.hits += 1
        kinds = [kind for kind, _ in shape[2:]]
        return self._from_template(template, [o for o, kind in zip(parsed, kinds) if kind != "group"], parsed)

    def _from_template(self, template: _Template, config_overrides: list[Override],
                       parsed: list[Override]) -> DictConfig:
        cfg = copy.deepcopy(template.cfg)
        try:
            self._apply_overrides_to_config(config_overrides, cfg)
        except OmegaConfBaseException as exc:
            raise ConfigCompositionException().with_traceback(exc.__traceback__) from exc
        app = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.hydra = template.hydra_base + [o.input_line for o in parsed if o.is_hydra_override()]
            cfg.hydra.overrides.task = template.task_base + [o.input_line for o in app]
            settings = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=settings.kv_sep, item_sep=settings.item_sep, exclude_keys=settings.exclude_keys)
        return cfg


@functools.cache
def register_components() -> None:
    """Put every schema the YAML files extend into Hydra's ConfigStore (the core sections, and
    each registered method, benchmark and task kind) and the ``run_id`` resolver of the
    hydra.run/sweep dirs. Idempotent; needed before anything composes."""
    from xlt_runner import config, identity  # noqa: F401  (core schemas, run_id resolver)
    from xlt_runner.data import BENCHMARKS
    from xlt_runner.methods import METHODS
    from xlt_runner.tasks import TASK_KINDS
    for registry in (METHODS, BENCHMARKS, TASK_KINDS):
        registry.discover()


def project_loader() -> CachingConfigLoader:
    """The process-wide caching loader over conf/ (created on first use)."""
    from hydra._internal.utils import create_config_search_path

    register_components()
    return CachingConfigLoader(create_config_search_path(str(CONF_DIR)))


def compose(overrides: list[str], config_name: str = "config", with_hydra: bool = False) -> DictConfig:
    """Compose a run config like ``xlt-run`` would (Hydra's own section only if ``with_hydra``)."""
    cfg = project_loader().load_configuration(config_name=config_name, overrides=list(overrides),
                                              run_mode=RunMode.RUN, from_shell=False)
    if not with_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
