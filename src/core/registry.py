"""A name -> builder registry: how losses and heads are composed from the config."""

from __future__ import annotations

from collections.abc import Callable


class Registry(dict):
    """``@REGISTRY.register("name")`` adds a builder; building runs all and keeps the non-None."""

    def register(self, name: str) -> Callable:
        def deco(builder: Callable) -> Callable:
            self[name] = builder
            return builder

        return deco

    def build_all(self, *args) -> dict:
        return {name: built for name, builder in self.items() if (built := builder(*args)) is not None}
