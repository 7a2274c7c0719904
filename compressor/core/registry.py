"""Method registry: the name in a recipe's ``method:`` (or ``--method``) to its class.

Every method registers itself when ``compressor.methods`` is imported; lookups import it
lazily, so the core (stats, pipeline) never loads a method it does not run.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from compressor.errors import UserError

if TYPE_CHECKING:
    from compressor.core.method import Method, MethodConfig

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method's ``name`` must equal its config's ``method`` tag."""
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    tag = cls.Config.model_fields.get("method")
    if tag is None or tag.default != cls.name:
        raise ValueError(f"{cls.__name__}.Config must declare method: Literal[{cls.name!r}]")
    REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import compressor.heal  # noqa: F401  (registers the heal post stage)
    import compressor.methods  # noqa: F401  (registers every method)


def method_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; a UserError naming the nearest name otherwise."""
    _load_all()
    if name in REGISTRY:
        return REGISTRY[name]
    lowered = {n.lower(): n for n in REGISTRY}
    near = ([lowered[name.lower()]] if isinstance(name, str) and name.lower() in lowered
            else difflib.get_close_matches(str(name), REGISTRY, n=1))
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise UserError(f"unknown method {name!r}.{hint} Run `svdc methods` for the list: "
                    f"{', '.join(sorted(REGISTRY))}.")


def config_classes() -> list[type[MethodConfig]]:
    """Every registered method's config class, in name order (the recipe's stage union)."""
    _load_all()
    return [REGISTRY[n].Config for n in sorted(REGISTRY)]
