"""Hydra sweeper plugin ``hydra/sweeper=xlt``: Hydra's basic sweeper whose sweep points
are composed by ``xlt_runner.composition.CachingConfigLoader`` (one full composition per
distinct shape of sweep point instead of two per job). Same parameters and behaviour as
``hydra/sweeper=basic``, which remains available for comparison.

Hydra only instantiates plugins from the ``hydra_plugins`` namespace package, hence
this module; the logic lives in xlt_runner/composition.py.
"""

from dataclasses import dataclass
from typing import Dict, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from xlt_runner.composition import CachingConfigLoader


@dataclass
class XltSweeperConf:
    _target_: str = "hydra_plugins.xlt_runner_sweeper.XltSweeper"
    max_batch_size: Optional[int] = None  # jobs per launcher call (None: all at once)
    params: Optional[Dict[str, str]] = None  # sweeps declared in config, e.g. by an experiment preset


ConfigStore.instance().store(group="hydra/sweeper", name="xlt", node=XltSweeperConf, provider="xlt_runner")


class XltSweeper(BasicSweeper):
    """``BasicSweeper`` whose launcher and batch validation share a caching config loader."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        loader = CachingConfigLoader(hydra_context.config_loader.get_search_path())
        super().setup(hydra_context=HydraContext(config_loader=loader, callbacks=hydra_context.callbacks),
                      task_function=task_function, config=config)
