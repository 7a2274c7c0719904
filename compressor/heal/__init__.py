"""The ``heal`` stage: after the sequential pass, train only the low-rank factors.

One job per module: ``config`` (options), ``method`` (the registered post stage), ``data``
(training windows and the teacher's top-k cache), ``loss`` (top-k KL / CE), ``factors``
(making low-rank buffers trainable in fp32 and back), ``trainer`` (the loop, its checkpoints),
``stage`` (what ``api.compress`` calls) and ``report`` (markdown and the loss-curve plot).
Importing this package registers the stage.
"""

from compressor.heal.config import HealConfig
from compressor.heal.post_stage import Heal

__all__ = ["Heal", "HealConfig"]
