"""Cached sweep composition (xlt_runner/composition.py) equals Hydra's own, field by field."""
from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from xlt_runner.composition import CONF_DIR, CachingConfigLoader, compose

BASE = ["model=tiny_xlmr", "logger=none", "trainer.max_steps=3", "languages.groups=[all]"]
# Each list is composed after a list of the same shape with other values, so all but
# the first of a shape are cache hits; the values cover ints, floats, strings,
# interpolations, lists, config groups and Hydra's own section.
SWEEP_POINTS = [
    BASE + ["seed=0", "method=lora", "method.r=4"],
    BASE + ["seed=7", "method=lora", "method.r=16"],
    BASE + ["seed=1", "method=xpe", "method.encoder_dropout=0.2"],
    BASE + ["seed=2", "method=xpe", "method.encoder_dropout=0.0"],
    BASE + ["seed=3", "method=xpe", "method.encoder_dropout=${method.classifier_dropout}"],
    BASE + ["seed=4", "sweep_name=a b", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    BASE + ["seed=5", "sweep_name=other", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    BASE + ["seed=6", "sweep_name=other", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=9"],
    ["seed=8", "languages.groups=[seen]", "experiment=xpe_cpu"],
    ["seed=9", "languages.groups=[all]", "experiment=xpe_cpu"],
]


def fresh_loader() -> ConfigLoaderImpl:
    compose([])  # registers the schemas
    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))


def as_data(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=False)


def test_cached_composition_equals_hydra_composition():
    hydra_loader = fresh_loader()
    cached = CachingConfigLoader(hydra_loader.get_search_path())
    for overrides in SWEEP_POINTS:
        expected = hydra_loader.load_configuration("config", overrides, RunMode.RUN)
        got = cached.load_configuration("config", overrides, RunMode.RUN)
        assert as_data(got) == as_data(expected), overrides
        assert OmegaConf.is_struct(got) and not OmegaConf.is_readonly(got.hydra)
    assert cached.hits >= 4  # the repeated shapes came from the cache


def test_cached_configs_are_independent_copies():
    loader = CachingConfigLoader(fresh_loader().get_search_path())
    first = loader.load_configuration("config", BASE + ["seed=0"], RunMode.RUN)
    first.model.max_length = 9
    first.hydra.job.num = 41
    second = loader.load_configuration("config", BASE + ["seed=1"], RunMode.RUN)
    third = loader.load_configuration("config", BASE + ["seed=2"], RunMode.RUN)
    assert second.model.max_length != 9 and third.model.max_length != 9
    assert OmegaConf.is_missing(third.hydra.job, "num")
    assert (second.seed, third.seed) == (1, 2) and loader.hits == 2
    assert list(third.hydra.overrides.task) == BASE + ["seed=2"]
    assert third.hydra.job.override_dirname == ",".join(sorted(BASE + ["seed=2"]))


def test_a_bad_value_fails_on_a_cache_hit_as_it_does_in_hydra():
    loader = CachingConfigLoader(fresh_loader().get_search_path())
    loader.load_configuration("config", ["seed=0"], RunMode.RUN)
    with pytest.raises(ConfigCompositionException) as cached_error:
        loader.load_configuration("config", ["seed=abc"], RunMode.RUN)
    assert loader.hits == 1
    with pytest.raises(ConfigCompositionException) as hydra_error:
        fresh_loader().load_configuration("config", ["seed=abc"], RunMode.RUN)
    assert str(cached_error.value.__cause__) == str(hydra_error.value.__cause__)
    assert "seed" in str(cached_error.value.__cause__)


@pytest.mark.parametrize("structural", ["+trainer.extra=1", "++seed=3", "~overwrite"])
def test_structural_overrides_take_hydras_path(structural):
    hydra_loader = fresh_loader()
    loader = CachingConfigLoader(hydra_loader.get_search_path())
    for seed in (0, 1):
        overrides = ["seed=" + str(seed), structural]
        got = loader.load_configuration("config", overrides, RunMode.RUN)
        assert as_data(got) == as_data(hydra_loader.load_configuration("config", overrides, RunMode.RUN))
    assert loader.hits == 0 and loader.misses == 2
