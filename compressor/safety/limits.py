"""Flag values the model cannot honour, refused before calibration starts (not capped or
discovered layer by layer): a calibration window longer than the model's context, and a rank
larger than the smallest targeted matrix allows; and a warning where a method's fit needs
more calibration tokens than given."""

from __future__ import annotations

import logging
from typing import Any

from compressor.errors import UserError

log = logging.getLogger("svdc")


def calibration_seqlen(cal: Any, model_config: Any) -> int:
    """The window length to calibrate with: an explicit seqlen beyond the model's context is
    an error; the default is capped, with a note."""
    ctx = getattr(model_config, "max_position_embeddings", None)
    if not ctx or cal.seqlen <= ctx:
        return cal.seqlen
    if "seqlen" in cal.model_fields_set:
        raise UserError(f"--seqlen {cal.seqlen} is longer than the model's context "
                        f"({ctx} tokens): use --seqlen <= {ctx}")
    log.warning("calibration windows shortened from the default %d to the model's context, "
                "%d tokens", cal.seqlen, ctx)
    return int(ctx)


def rank_bound(cfg: Any, m: int, n: int) -> int:
    """The largest rank a stage accepts for an m x n matrix: one that still saves parameters
    for a pure low-rank method with float factors, the smaller dimension otherwise (quantized
    factors are checked in bytes when the rank is chosen)."""
    from compressor.methods.lowrank_family import LowRankConfig
    if isinstance(cfg, LowRankConfig) and cfg.lowrank_bits is None:
        return (m * n - 1) // (m + n)
    return min(m, n)


def check_ranks(stages_cfg: list[Any], shapes: dict[str, tuple[int, int]]) -> None:
    """Refuse an explicit rank that does not fit every targeted matrix, naming the bound that
    holds for all of them and the matrix that sets it."""
    for i, cfg in enumerate(stages_cfg):
        rank = getattr(cfg, "rank", None)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0 or not shapes:
            continue
        name, (m, n) = min(shapes.items(), key=lambda kv: rank_bound(cfg, *kv[1]))
        bound = rank_bound(cfg, m, n)
        if rank > bound:
            raise UserError(f"rank {rank} is too large for stage {i + 1} ({cfg.method}): use a "
                            f"rank <= {bound} (the smallest target, {name} {m}x{n})")


def warn_few_tokens(stages_cfg: list[Any], tokens: int, widest_input: int) -> list[str]:
    """Log (and return) each stage's advice when the calibration is too small for its fit."""
    from compressor.core.registry import get_method, is_post_stage
    lines = []
    for i, cfg in enumerate(stages_cfg):
        if is_post_stage(cfg.method):
            continue
        advice = get_method(cfg.method)().calibration_advice(cfg, tokens, widest_input)
        if advice:
            lines.append(f"stage {i + 1}: {advice}")
            log.warning("%s", lines[-1])
    return lines
