"""LQ-LoRA stage: W ≈ NF-quantized Q + rank-r BA, with bits / block sizes chosen per matrix.

plan() runs the decomposition (few iterations, randomized SVD) for every target and every
candidate NF configuration, then an ILP picks one configuration per matrix so that the
average bits per weight (codes, absmax (double-quantized) and the factors) meet bits.
compress() runs the full decomposition with the planned configuration.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.method import Method
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.errors import MissingStatistic, UserError
from compressor.methods.lqlora.budget import (
    NFConfig,
    candidate_configs,
    config_bits,
    ilp_allocate,
    nf_quantizer,
)
from compressor.methods.lqlora.decompose import lq_decompose
from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import LowRankPart
from compressor.parts.quantized import NFQuantPart
from compressor.primitives.linalg import check_rank

from .config import LQLoRAConfig


def _fisher_weights(fisher: torch.Tensor | None, name: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row / column weights: sqrt of the Fisher information averaged over columns / rows."""
    if fisher is None:
        raise MissingStatistic(f"{name}: fisher_weighted needs the 'fisher' statistic; it was not collected")
    f = fisher.float()
    return f.mean(1).sqrt(), f.mean(0).sqrt()


@register
class LQLoRA(Method):
    name = "lqlora"
    summary = ("Quantized (NormalFloat) + low-rank decomposition with per-matrix bits and "
               "block sizes from an ILP under a bits-per-weight budget (LQ-LoRA). The paper "
               "fine-tunes the low-rank part on LM data: --heal-steps N does it (heal stage).")
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
        configs = candidate_configs(cfg.nf_bits, cfg.block_sizes)
        names = list(weights)
        numels = [weights[nm].numel() for nm in names]
        total = float(sum(numels))
        bits_cache: dict[tuple[int, int], list[float]] = {}
        bits = []
        for name in names:
            shape = tuple(weights[name].shape)
            if shape not in bits_cache:
                bits_cache[shape] = [config_bits(c, shape[0], shape[1], cfg.rank, dtype)
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
                _, _, _, info = lq_decompose(
                    w, cfg.rank, nf_quantizer(conf), max_iters=cfg.plan_iters,
                    row_weight=rw, col_weight=cw, svd_method=cfg.plan_svd_method)
                row.append(info["abs_error"])
            # The paper's objective: the sum over matrices of ‖W − (Q + L)‖² (Fisher-weighted
            # in the data-aware variant), so a high-norm matrix's error counts for more.
            errors.append(row)
        choice, info = ilp_allocate(errors, bits, numels, cfg.bits)
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
            conf = NFConfig(int(target.plan["nf_bits"]), int(target.plan["block_size"]))
        else:
            conf = NFConfig(int(cfg.bits), cfg.block_size)
        check_rank(m, n, cfg.rank, target.name, zero_ok=True)
        rw = cw = None
        if cfg.fisher_weighted:
            rw, cw = _fisher_weights(target.stats.fisher, target.name)
        q, a, b, dinfo = lq_decompose(
            target.weight.float(), cfg.rank, nf_quantizer(conf),
            max_iters=cfg.max_iters, row_weight=rw, col_weight=cw,
            generator=target.generator, svd_method=cfg.svd_method)
        parts = [NFQuantPart.from_quant(q)]
        if cfg.rank > 0:
            parts.append(LowRankPart(a.to(target.dtype), b.to(target.dtype)))
        module = CompressedLinear(m, n, parts, target.bias)
        info = {"nf_bits": conf.bits, "block_size": conf.block_size, "rank": cfg.rank,
                "iterations": dinfo["iterations"], "error": dinfo["error"],
                "fisher_weighted": cfg.fisher_weighted,
                "weight_floored": dinfo["weight_floored"]}
        if "planned_error" in target.plan:
            info["planned_error"] = target.plan["planned_error"]
            info["ilp_achieved_bits"] = target.plan["ilp_achieved_bits"]
        return Compressed(module, info)
