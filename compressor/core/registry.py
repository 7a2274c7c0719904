"""Stage registry: the name in a recipe's ``method:`` (or ``--method``) to its class.

Two kinds of stage register here: a ``Method`` compresses one linear at a time in the
sequential pass; a ``PostStage`` (heal) runs once on the whole compressed model after it. The
registry imports no plugin: the modules that register stages are listed as entry points of the
``svdc.stages`` group (pyproject.toml, svdc's own and any installed package's), loaded on the
first lookup, so the core never loads a method it does not run and a third-party package adds a
method by declaring one entry point.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from compressor.errors import UserError

if TYPE_CHECKING:
    from compressor.core.method import Method, MethodConfig
    from compressor.core.post_stage import PostStage

ENTRY_POINT_GROUP = "svdc.stages"

REGISTRY: dict[str, type[Method]] = {}
POST_STAGES: dict[str, type[PostStage]] = {}
_loaded = False


def _check(cls) -> None:
    if cls.name in REGISTRY or cls.name in POST_STAGES:
        raise ValueError(f"stage {cls.name!r} registered twice")
    tag = cls.Config.model_fields.get("method")
    if tag is None or tag.default != cls.name:
        raise ValueError(f"{cls.__name__}.Config must declare method: Literal[{cls.name!r}]")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator for a Method: its ``name`` must equal its config's ``method`` tag."""
    _check(cls)
    REGISTRY[cls.name] = cls
    return cls


def register_post_stage(cls: type[PostStage]) -> type[PostStage]:
    """Class decorator for a PostStage (same naming rule as ``register``)."""
    _check(cls)
    POST_STAGES[cls.name] = cls
    return cls


def _load_all() -> None:
    """Import every module named in the ``svdc.stages`` entry points (once)."""
    global _loaded
    if _loaded:
        return
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    if not found:
        raise UserError("no compression methods are registered: svdc registers them through its "
                        "package metadata; install it (pip install -e . in the source folder)")
    for ep in found:
        importlib.import_module(ep.value)
    _loaded = True


def method_names() -> list[str]:
    """Every stage name, methods and post stages, sorted."""
    _load_all()
    return sorted({*REGISTRY, *POST_STAGES})


def _unknown(name: str) -> UserError:
    names = method_names()
    lowered = {n.lower(): n for n in names}
    near = ([lowered[name.lower()]] if isinstance(name, str) and name.lower() in lowered
            else difflib.get_close_matches(str(name), names, n=1))
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return UserError(f"unknown method {name!r}.{hint} Run `svdc methods` for the list: "
                     f"{', '.join(names)}.")


def stage_class(name: str) -> type[Method] | type[PostStage]:
    """The class registered as ``name`` (either kind); a UserError naming the nearest name."""
    _load_all()
    if name in REGISTRY:
        return REGISTRY[name]
    if name in POST_STAGES:
        return POST_STAGES[name]
    raise _unknown(name)


def is_post_stage(name: str) -> bool:
    _load_all()
    return name in POST_STAGES


def get_method(name: str) -> type[Method]:
    """The Method registered as ``name``; a UserError for a post stage or an unknown name."""
    cls = stage_class(name)
    if name in POST_STAGES:
        raise UserError(f"{name} is a post stage (it trains the whole compressed model after "
                        "the sequential pass), not a compression method")
    return cls


def config_classes() -> list[type[MethodConfig]]:
    """Every registered stage's config class, in name order (the recipe's stage union)."""
    return [stage_class(n).Config for n in method_names()]
