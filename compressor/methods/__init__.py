"""Method registry: ``--method NAME`` looks a class up here. One file per method."""

from __future__ import annotations

from .base import Compressed, LinearStats, Method, MethodConfig, Target

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    from ..errors import UserError
    if name not in REGISTRY:
        import difflib
        near = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UserError(f"unknown method {name!r}.{hint} Run `svdc methods` for the list: "
                        f"{', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def _load_all() -> None:
    # Import for the side effect of registration. Keep this list in sync with the folder.
    import importlib
    import pkgutil
    for m in pkgutil.iter_modules(__path__):
        if m.name not in ("base",):
            importlib.import_module(f"{__name__}.{m.name}")


_load_all()

__all__ = ["REGISTRY", "register", "get_method", "Method", "MethodConfig", "Target",
           "LinearStats", "Compressed"]
