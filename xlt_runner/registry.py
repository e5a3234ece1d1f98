"""One registration per component: ``@METHODS.register("spt", SptConfig)`` beside the class.

A :class:`Registry` maps a config name (``method.family``, ``benchmark.name``,
``benchmark.task``) to the class that implements it and stores the component's config
schema in Hydra's ConfigStore as ``<group>/<name>_schema``, the first entry of the
component's yaml defaults list. The registries find their components by importing every
module of their package once (:meth:`Registry.discover`), so adding a method, a benchmark or
a task kind is one module and one yaml file, and no list elsewhere names it.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from hydra.core.config_store import ConfigStore

from xlt_runner.config import ConfigError

T = TypeVar("T")
#: ``lora:generation``: the variant of component ``lora`` for task kind ``generation`` (one config
#: name, one schema, a separate implementation per task kind).
VARIANT_SEPARATOR = ":"


class Registry(Generic[T]):
    """Components of one kind. ``group``: the config group of their schemas (None: no schema);
    ``key``: the config key that names one, for messages; ``packages``: where they live;
    ``name_attribute``: a class attribute the registry sets to the registered name (so the
    name is written once, in the decorator)."""

    def __init__(self, what: str, key: str, packages: tuple[str, ...], group: str | None = None,
                 name_attribute: str | None = None) -> None:
        self.what, self.key, self.packages, self.group = what, key, packages, group
        self.name_attribute = name_attribute  # set on each class to its registered name
        self._entries: dict[str, T] = {}
        self._schemas: dict[str, type] = {}
        self._discovered = False

    def register(self, name: str, schema: type | None = None) -> Callable[[T], T]:
        """Class decorator: register the component under ``name`` with its config ``schema``."""
        def decorate(component: T) -> T:
            if name in self._entries and self._entries[name] is not component:
                raise RuntimeError(f"{self.what} {name!r} is registered twice: {self._entries[name]} and {component}")
            self._entries[name] = component
            if self.name_attribute is not None:
                setattr(component, self.name_attribute, name.split(VARIANT_SEPARATOR)[0])
            if schema is not None:
                self._schemas[name] = schema
                if self.group is not None:
                    ConfigStore.instance().store(group=self.group, name=f"{name}_schema", node=schema)
            return component
        return decorate

    def discover(self) -> None:
        """Import every module of the registry's packages (once), which registers what they define."""
        if self._discovered:
            return
        self._discovered = True
        for package_name in self.packages:
            package = importlib.import_module(package_name)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{package_name}.{module.name}")

    def get(self, name: str) -> T:
        self.discover()
        try:
            return self._entries[name]
        except KeyError:
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            raise ConfigError(f"{self.key}={name!r} is not a known {self.what}; choose one of: "
                              f"{', '.join(self.names())}" + (f" (did you mean {hint[0]}?)" if hint else "")
                              ) from None

    def schema(self, name: str) -> type | None:
        self.discover()
        return self._schemas.get(name)

    def names(self) -> list[str]:
        """Registered names, without task-kind variants."""
        self.discover()
        return sorted(n for n in self._entries if VARIANT_SEPARATOR not in n)

    def variant(self, name: str, task_kind: str) -> T:
        """``name``'s implementation for ``task_kind``: ``name:task_kind`` when registered, else ``name``."""
        self.discover()
        return self._entries.get(f"{name}{VARIANT_SEPARATOR}{task_kind}") or self.get(name)
