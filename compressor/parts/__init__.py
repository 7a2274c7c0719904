"""Compressed layer types. Importing this package registers every part type."""

import importlib
import pkgutil

from .base import PART_TYPES, CompressedLinear, Part, register_part

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PART_TYPES", "CompressedLinear", "Part", "register_part"]
