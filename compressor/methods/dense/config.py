"""The dense stage has no options: the weight is stored in the checkpoint's dtype."""

from __future__ import annotations

from typing import Literal

from compressor.core.method import MethodConfig


class DenseConfig(MethodConfig):
    method: Literal["dense"] = "dense"
