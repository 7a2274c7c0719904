"""LQ-LoRA stage: W ≈ NF-quantized Q + rank-r BA, with bits / block sizes chosen per matrix.

``plan`` runs the decomposition (few iterations, randomized SVD) for every target and every
candidate NF configuration, then an ILP picks one configuration per matrix so that the
average bits per weight — codes, absmax (double-quantized) and the 16-bit factors — meet
``bits``. ``compress`` runs the full decomposition with the planned configuration.
The math is in ``compressor/lqlora.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from .. import lqlora
from ..errors import UserError
from ..modules.base import CompressedLinear
from ..modules.lowrank import LowRankPart
from ..modules.quantized import NFQuantPart
from . import register
from .base import Compressed, Method, MethodConfig, Target


class LQLoRAConfig(MethodConfig):
    bits: float = Field(2.75, gt=0.0, description=(
        "Target average bits per weight over all targets, counting NF codes, block scales "
        "and the 16-bit low-rank factors. With mixed=false: the NF code width (2, 3, 4, 8)."))
    rank: int = Field(64, ge=0, description="Rank of the low-rank part L = BA (0: NF only).")
    mixed: bool = Field(True, description=(
        "Choose NF bits and block size per matrix by an integer linear program under the "
        "`bits` budget; false: one fixed NF{bits} configuration with `block_size`."))
    max_iters: int = Field(20, ge=0, description=(
        "Most alternations of L = SVD_r(W - Q), Q = quantize(W - L); stops early when the "
        "error rises."))
    plan_iters: int = Field(3, ge=0, description=(
        "Alternations per candidate configuration while planning (the sweep runs every "
        "configuration on every matrix, so it is kept short)."))
    fisher_weighted: bool = Field(False, description=(
        "Weight rows and columns of the error by sqrt of the mean Fisher information "
        "(needs a backward pass over the calibration data)."))
    nf_bits: list[int] = Field(list(lqlora.DEFAULT_NF_BITS), min_length=1, description=(
        "Candidate NF code widths for the mixed allocation."))
    block_sizes: list[int] = Field(list(lqlora.DEFAULT_BLOCK_SIZES), min_length=1,
                                   description="Candidate NF block sizes for the mixed allocation.")
    block_size: int = Field(64, ge=1, description="NF block size when mixed=false.")
    svd_method: Literal["full", "randomized"] = Field("full", description=(
        "SVD inside the final decomposition: 'full' or 'randomized' (seeded)."))
    plan_svd_method: Literal["full", "randomized"] = Field("randomized", description=(
        "SVD inside the planning sweep (randomized is much cheaper for small ranks)."))

    @model_validator(mode="after")
    def _check(self) -> "LQLoRAConfig":
        for b in ([] if self.mixed else [self.bits]) + list(self.nf_bits):
            if b != int(b) or not 2 <= int(b) <= 8:
                raise ValueError(f"NF bits {b} unsupported: use an integer from 2 to 8 "
                                 f"(with mixed=false, `bits` is the NF code width)")
        if any(bs < 1 for bs in self.block_sizes):
            raise ValueError("block sizes must be positive")
        return self


def _fisher_weights(fisher: torch.Tensor | None, name: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row / column weights: sqrt of the Fisher information averaged over columns / rows."""
    if fisher is None:
        raise ValueError(f"{name}: fisher_weighted needs the 'fisher' statistic (not collected)")
    f = fisher.float()
    return f.mean(1).sqrt(), f.mean(0).sqrt()


@register
class LQLoRA(Method):
    name = "lqlora"
    summary = ("Quantized (NormalFloat) + low-rank decomposition with per-matrix bits and "
               "block sizes from an ILP under a bits-per-weight budget (LQ-LoRA).")
    Config = LQLoRAConfig
    needs = frozenset()

    @classmethod
    def needs_for(cls, cfg: LQLoRAConfig) -> frozenset[str]:
        """Statistics this configuration needs: Fisher only for the weighted variant."""
        return frozenset({"fisher"}) if cfg.fisher_weighted else frozenset()

    def plan(self, weights: dict[str, torch.Tensor], cfg: LQLoRAConfig,
             fisher: dict[str, torch.Tensor] | None = None,
             dtype: torch.dtype = torch.float16) -> dict[str, dict[str, Any]]:
        if not cfg.mixed:
            return {}
        configs = lqlora.candidate_configs(cfg.nf_bits, cfg.block_sizes)
        names = list(weights)
        numels = [weights[nm].numel() for nm in names]
        total = float(sum(numels))
        bits_cache: dict[tuple[int, int], list[float]] = {}
        bits = []
        for name in names:
            shape = tuple(weights[name].shape)
            if shape not in bits_cache:
                bits_cache[shape] = [lqlora.config_bits(c, shape[0], shape[1], cfg.rank, dtype)
                                     for c in configs]
            bits.append(bits_cache[shape])
        # Cheap feasibility check before the expensive sweep of decompositions.
        floor = sum(min(b) * k for b, k in zip(bits, numels)) / total
        if floor > cfg.bits:
            raise UserError(f"the budget {cfg.bits} bits/weight is below the smallest configuration "
                            f"{floor:.3f} (rank {cfg.rank} included); raise --bits or lower --rank")
        errors = []
        for name, numel in zip(names, numels):
            w = weights[name]
            rw = cw = None
            if cfg.fisher_weighted:
                rw, cw = _fisher_weights(None if fisher is None else fisher.get(name), name)
            row = []
            for conf in configs:
                _, _, _, info = lqlora.lq_decompose(
                    w, cfg.rank, lqlora.nf_quantizer(conf), max_iters=cfg.plan_iters,
                    row_weight=rw, col_weight=cw, svd_method=cfg.plan_svd_method)
                row.append(info["abs_error"])
            # The paper's objective: the sum over matrices of ‖W − (Q + L)‖² (Fisher-weighted
            # in the data-aware variant), so a high-norm matrix's error counts for more.
            errors.append(row)
        choice, info = lqlora.ilp_allocate(errors, bits, numels, cfg.bits)
        out = {}
        for i, (name, j) in enumerate(zip(names, choice)):
            out[name] = {"nf_bits": configs[j].bits, "block_size": configs[j].block_size,
                         "planned_error": errors[i][j],
                         "planned_bits": bits[i][j],
                         "ilp_achieved_bits": info["achieved_bits"],
                         "ilp_status": info["status"], "ilp_fallback": info["fallback"]}
        return out

    def compress(self, target: Target, cfg: LQLoRAConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        m, n = target.weight.shape
        if cfg.mixed:
            if "nf_bits" not in target.plan:
                raise ValueError(f"{target.name}: no LQ-LoRA plan (plan() not run?)")
            conf = lqlora.NFConfig(int(target.plan["nf_bits"]), int(target.plan["block_size"]))
        else:
            conf = lqlora.NFConfig(int(cfg.bits), cfg.block_size)
        if cfg.rank > min(m, n):
            raise UserError(f"lqlora rank {cfg.rank} does not fit {target.name} ({m}x{n}); "
                            f"use --rank <= {min(m, n)}")
        rw = cw = None
        if cfg.fisher_weighted:
            rw, cw = _fisher_weights(target.stats.fisher, target.name)
        q, a, b, dinfo = lqlora.lq_decompose(
            target.weight.float(), cfg.rank, lqlora.nf_quantizer(conf),
            max_iters=cfg.max_iters, row_weight=rw, col_weight=cw,
            generator=target.generator, svd_method=cfg.svd_method)
        parts = [NFQuantPart.from_quant(q)]
        if cfg.rank > 0:
            parts.append(LowRankPart(a.to(target.dtype), b.to(target.dtype)))
        module = CompressedLinear(m, n, parts, target.bias)
        stored = sum(p.stored_bytes() for p in parts)
        info = {"nf_bits": conf.bits, "block_size": conf.block_size, "rank": cfg.rank,
                "iterations": dinfo["iterations"], "error": dinfo["error"],
                "bits_per_weight": 8.0 * stored / (m * n),
                "fisher_weighted": cfg.fisher_weighted,
                "weight_floored": dinfo["weight_floored"]}
        if "planned_error" in target.plan:
            info["planned_error"] = target.plan["planned_error"]
            info["ilp_achieved_bits"] = target.plan["ilp_achieved_bits"]
        return Compressed(module, info)
