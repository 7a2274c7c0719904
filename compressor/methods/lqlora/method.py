"""LQ-LoRA stage: W ≈ NF-quantized Q + rank-r BA, with bits / block sizes chosen per matrix.

plan() prices every candidate NF configuration (codes, double-quantized absmax and the
rank-r factors at their 16-bit storage dtype) and gets its error on every target from a
short decomposition (few iterations, randomized SVD); an ILP then picks one configuration
per matrix so that the average bits per weight meet ``bits``. By default (``error:
fisher-output``) that error is the output error on the calibration inputs weighted by the
output channels' Fisher, tr(D_F ΔW G ΔWᵀ) (an estimate of the loss increase, comparable
across layers), measured per target in a planning pass over the uncompressed model
(``plan_measure``), so the ILP spends bits where the loss needs them, not where ‖ΔW‖ or
the raw output error is largest; the NF codes are chosen with GPTQ's rounding on the same
Gram (``rounding: gptq``). compress() runs the full decomposition with the planned
configuration on the sequential pass's Gram.

The paper fine-tunes the low-rank part afterwards (a `heal` stage does that here); this
stage alone is the training-free starting point.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.method import Method, SharedInputCache, fisher_output_row_weights
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.errors import MissingStatistic, UserError
from compressor.methods.gptq.solver import prepare_hessian
from compressor.methods.lqlora.budget import (
    NFConfig,
    candidate_configs,
    config_bits,
    nf_gptq_quantize_all,
    nf_gptq_quantizer,
    nf_quantizer,
)
from compressor.methods.lqlora.decompose import (
    QuantizeAll,
    Quantizer,
    each,
    lq_decompose,
    lq_plan_errors,
)
from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import LowRankPart
from compressor.parts.quantized import NFQuantPart
from compressor.primitives.knapsack import ilp_allocate
from compressor.primitives.linalg import check_rank, whitening

from .config import LQLoRAConfig


def _fisher_weights(fisher: torch.Tensor | None, name: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row / column weights: sqrt of the Fisher information averaged over columns / rows."""
    if fisher is None:
        raise MissingStatistic(f"{name}: error 'fisher' needs the 'fisher' statistic; it was not collected")
    f = fisher.float()
    return f.mean(1).sqrt(), f.mean(0).sqrt()


def factor_dtype(cfg: LQLoRAConfig, storage: torch.dtype) -> torch.dtype:
    """The dtype the factors are written (and priced) in."""
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.factor_dtype, storage)


def _weighting(target: Target, cfg: LQLoRAConfig, cache: SharedInputCache) -> dict[str, Any]:
    """lq_decompose's weighting keyword arguments for this target and config (the
    whitening of a Gram shared by q/k/v or gate/up comes from ``cache``)."""
    if cfg.error == "fisher":
        rw, cw = _fisher_weights(target.stats.fisher, target.name)
        return {"row_weight": rw, "col_weight": cw}
    if cfg.error in ("output", "fisher-output"):
        gram = _gram(target, cfg)
        L = cache.get(gram, ("whiten", cfg.percdamp, str(target.weight.device)),
                      lambda: whitening(gram.to(target.weight.device), cfg.percdamp)[0])
        if cfg.error == "output":
            return {"whiten": L}
        # √ of the loss weights: ‖diag(√D) ΔW L‖² = tr(D ΔW G ΔWᵀ), in one unit across
        # matrices (the raw Fisher row sums would weigh each matrix by its input energy)
        weights = fisher_output_row_weights(target, gram.to(torch.float64))
        return {"whiten": L, "row_weight": weights.sqrt()}
    return {}


def _gram(target: Target, cfg: LQLoRAConfig) -> torch.Tensor:
    """The target's calibration Gram, which the output-error objectives and GPTQ rounding read."""
    if target.stats.gram is None:
        raise MissingStatistic(f"{target.name}: error '{cfg.error}' needs the calibration "
                               f"Gram; give the stage calibration data (or use error: weight)")
    return target.stats.gram


def _hessian(target: Target, cfg: LQLoRAConfig, cache: SharedInputCache):
    """GPTQ's inverse Hessian of this target's Gram (from ``cache`` when q/k/v or gate/up
    share the Gram)."""
    gram, dev = _gram(target, cfg), target.weight.device
    return cache.get(gram, ("hessian", cfg.percdamp, str(dev)),
                     lambda: prepare_hessian(gram, cfg.percdamp, act_order=True, device=dev))


def _quantizer(target: Target, cfg: LQLoRAConfig, cache: SharedInputCache, conf: NFConfig
               ) -> Quantizer:
    """One NF configuration's quantizer: GPTQ rounding on this target's Gram, or nearest."""
    if cfg.rounding != "gptq":
        return nf_quantizer(conf)
    return nf_gptq_quantizer(conf, _hessian(target, cfg, cache))


def _quantize_all(target: Target | None, cfg: LQLoRAConfig, cache: SharedInputCache,
                  configs: list[NFConfig]) -> QuantizeAll:
    """Every configuration's rounding of one matrix: GPTQ's in one stacked pass, or nearest."""
    if cfg.rounding != "gptq" or target is None:
        return each([nf_quantizer(c) for c in configs])
    return nf_gptq_quantize_all(configs, _hessian(target, cfg, cache))


@register
class LQLoRA(Method):
    name = "lqlora"
    summary = ("Quantized (NormalFloat) + low-rank decomposition with per-matrix bits and "
               "block sizes from an ILP on the Fisher-weighted calibration output error under a "
               "bits-per-weight budget (LQ-LoRA). The paper fine-tunes the low-rank part on LM data: "
               "--heal-steps N does it (heal stage).")
    Config = LQLoRAConfig
    needs = frozenset()

    def __init__(self) -> None:
        super().__init__()
        # q/k/v (and gate/up) share one Gram: its whitening and GPTQ Hessian are made once
        self._whitenings, self._hessians = SharedInputCache(), SharedInputCache()

    @classmethod
    def needs_for(cls, cfg: LQLoRAConfig) -> frozenset[str]:
        """Statistics compress() reads: the Gram (output error) or the Fisher (weighted)."""
        return {"output": frozenset({"gram"}), "fisher-output": frozenset({"gram", "fisher_rows"}),
                "fisher": frozenset({"fisher"})}.get(cfg.error, frozenset())

    def plan_needs_for(self, cfg: LQLoRAConfig) -> frozenset[str]:
        """The ILP's output errors need each target's Gram before any matrix is compressed."""
        return (frozenset({"gram"}) if cfg.mixed and cfg.error in ("output", "fisher-output")
                else frozenset())

    def calibration_advice(self, cfg: LQLoRAConfig, tokens: int, widest_input: int) -> str | None:
        # measured on SmolLM2 (tests/methods/test_lqlora_heldout.py): with 2,048 tokens for
        # down_proj's 1,536 inputs the GPTQ-rounded fit lost to RTN on held-out windows; with
        # 8,192 every planned matrix beat it
        if cfg.error in ("output", "fisher-output") and tokens < 4 * widest_input:
            return (f"lqlora error: {cfg.error}: {tokens} calibration tokens for inputs up to "
                    f"{widest_input} wide; its GPTQ-rounded fit may not carry over to other "
                    f"text below ~{4 * widest_input} tokens: raise --nsamples or --seqlen")
        return None

    def _error_row(self, w: torch.Tensor, cfg: LQLoRAConfig, configs: list[NFConfig],
                   weighting: dict[str, Any], generator: torch.Generator | None,
                   target: Target | None = None) -> list[float]:
        # The paper's objective: the summed (weighted) squared error over matrices, so a
        # matrix whose outputs carry more signal counts for more. ``target`` (with its Gram)
        # gives GPTQ rounding; without one the rounding is nearest.
        if cfg.plan_iters <= 1:     # one shared step: see lq_plan_errors
            return lq_plan_errors(w, cfg.rank, _quantize_all(target, cfg, self._hessians, configs),
                                  generator=generator, svd_method=cfg.plan_svd_method,
                                  **weighting)
        row = []
        for conf in configs:
            quantizer = (nf_quantizer(conf) if target is None
                         else _quantizer(target, cfg, self._hessians, conf))
            _, _, _, info = lq_decompose(
                w, cfg.rank, quantizer, max_iters=cfg.plan_iters,
                generator=generator, svd_method=cfg.plan_svd_method, **weighting)
            row.append(info["abs_error"])
        return row

    def plan_measure(self, target: Target, cfg: LQLoRAConfig) -> list[float]:
        """Output error tr(ΔW G ΔWᵀ) (Fisher-weighted: tr(D_F ΔW G ΔWᵀ)) of every candidate
        configuration on this target."""
        configs = candidate_configs(cfg.nf_bits, cfg.block_sizes)
        check_rank(*target.weight.shape, cfg.rank, target.name, zero_ok=True)
        return self._error_row(target.weight, cfg, configs,
                               _weighting(target, cfg, self._whitenings), target.generator, target)

    def plan(self, weights: dict[str, torch.Tensor], cfg: LQLoRAConfig,
             fisher: dict[str, torch.Tensor] | None = None,
             dtype: torch.dtype = torch.float16,
             measures: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        if not cfg.mixed:
            return {}
        configs = candidate_configs(cfg.nf_bits, cfg.block_sizes)
        fdtype = factor_dtype(cfg, dtype)
        names = list(weights)
        shapes = {nm: tuple(weights[nm].shape) for nm in names}
        numels = [shapes[nm][0] * shapes[nm][1] for nm in names]
        total = float(sum(numels))
        bits_cache: dict[tuple[int, int], list[float]] = {}
        bits = []
        for name in names:
            shape = shapes[name]
            if shape not in bits_cache:
                bits_cache[shape] = [config_bits(c, shape[0], shape[1], cfg.rank, fdtype)
                                     for c in configs]
            bits.append(bits_cache[shape])
        # Cheap feasibility check before the expensive sweep of decompositions.
        floor = sum(min(b) * k for b, k in zip(bits, numels)) / total
        if floor > cfg.bits:
            raise UserError(f"the budget {cfg.bits} bits/weight is below the smallest configuration "
                            f"{floor:.3f} (rank {cfg.rank} included); raise --bits or lower --rank")
        if cfg.error in ("output", "fisher-output"):
            if measures is None:
                raise ValueError(f"error '{cfg.error}' plans from calibration Grams, and none "
                                 "were measured (run it through the pipeline, or use error: weight)")
            missing = [nm for nm in names if nm not in measures]
            if missing:
                raise ValueError(f"no planning measure for {missing[:3]}")
            errors = [list(measures[nm]) for nm in names]
        else:
            errors = []
            for name in names:
                weighting = {}
                if cfg.error == "fisher":
                    rw, cw = _fisher_weights(None if fisher is None else fisher.get(name), name)
                    weighting = {"row_weight": rw, "col_weight": cw}
                errors.append(self._error_row(weights[name], cfg, configs, weighting, None))
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
        q, a, b, dinfo = lq_decompose(
            target.weight.float(), cfg.rank, _quantizer(target, cfg, self._hessians, conf),
            max_iters=cfg.max_iters, generator=target.generator, svd_method=cfg.svd_method,
            **_weighting(target, cfg, self._whitenings))
        parts = [NFQuantPart.from_quant(q)]
        fdtype = factor_dtype(cfg, target.dtype)
        if cfg.rank > 0:
            parts.append(LowRankPart(a.to(fdtype), b.to(fdtype)))
        module = CompressedLinear(m, n, parts, target.bias)
        info = {"nf_bits": conf.bits, "block_size": conf.block_size, "rank": cfg.rank,
                "iterations": dinfo["iterations"], "error": dinfo["error"],
                "error_kind": cfg.error, "fisher_weighted": cfg.error == "fisher",
                "rounding": cfg.rounding,
                "factor_dtype": str(fdtype).removeprefix("torch."),
                "weight_floored": dinfo["weight_floored"],
                "bits_per_weight": 8.0 * sum(p.stored_bytes() for p in parts) / (m * n)}
        if "planned_error" in target.plan:
            info["planned_error"] = target.plan["planned_error"]
            info["ilp_achieved_bits"] = target.plan["ilp_achieved_bits"]
        return Compressed(module, info)
