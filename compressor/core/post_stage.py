"""What a post stage is: a step that runs once on the whole compressed model after the
sequential pass (heal trains the low-rank factors). It is never handed a linear, so it has no
``compress``: the run's phases call it (phases.heal). Registered with ``register_post_stage``;
its config, like a Method's, is its API and a recipe stage."""

from __future__ import annotations

from typing import ClassVar

from compressor.core.method import MethodConfig


class PostStage:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""               # one line for `svdc methods`
    Config: ClassVar[type[MethodConfig]] = MethodConfig
