"""What every truncating low-rank method shares: config fields, rank choice, output.

A low-rank method only says how it factorizes one matrix at a given rank
(``factorize``); this base decides the rank (explicit, uniform ratio, or WeLore's global
allocation in ``plan``), refuses ranks that would not save parameters, keeps N-LRC
matrices dense, and wraps the factors into a ``CompressedLinear``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compressor.core.method import Method, MethodConfig
from compressor.core.types import Compressed, Target
from compressor.errors import UserError
from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import DensePart, LowRankPart
from compressor.parts.qlowrank import QuantLowRankPart
from compressor.primitives.allocation import welore_ranks
from compressor.primitives.linalg import rank_from_ratio, singular_values


class LowRankConfig(MethodConfig):
    """Fields every low-rank method accepts."""

    ratio: float = Field(0.2, gt=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%); the rank is "
        "floor((1-ratio)*m*n/(m+n)). Ignored when `rank` is set."))
    rank: int | None = Field(None, ge=1, description=(
        "Explicit rank for every target matrix; overrides `ratio`."))
    allocation: Literal["uniform", "welore"] = Field("uniform", description=(
        "How ranks are spread over matrices: 'uniform' (same ratio everywhere) or 'welore' "
        "(one global budget; heavy-tailed spectra get low ranks, flat ones stay dense)."))
    svd_method: Literal["full", "randomized"] = Field("full", description=(
        "'full' SVD (exact) or 'randomized' (seeded range finder; faster for small ranks)."))
    lowrank_bits: int | None = Field(None, ge=2, le=8, description=(
        "Store both factors as group-wise uniform codes of this many bits (None: in the "
        "model's dtype). The budget then counts bytes: `ratio` is the fraction of the "
        "matrix's bytes removed, so 8-bit factors buy about twice the rank."))
    lowrank_group_size: int = Field(64, ge=1, description=(
        "Group size of the factors' codes (groups run along each factor's input axis)."))

    @model_validator(mode="after")
    def _bytes_budget(self) -> "LowRankConfig":
        if self.lowrank_bits is not None and self.allocation == "welore":
            raise ValueError("allocation 'welore' counts parameters, lowrank_bits counts bytes: "
                             "use allocation 'uniform' with lowrank_bits")
        return self


class LowRankMethod(Method):
    """Base class: subclasses implement ``factorize`` (and set name/summary/Config/needs)."""

    Config = LowRankConfig

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(A (rank, in), B (out, rank), info) for this method's objective."""
        raise NotImplementedError

    def spectrum(self, target: Target, cfg: Any) -> torch.Tensor:
        """Singular values of the matrix this method truncates (W here; W·L for whitened SVD,
        D_F^½·W·L for two-sided FWSVD): what a rank allocation for this method must read."""
        return singular_values(target.weight)

    def plan_needs_for(self, cfg: Any) -> frozenset[str]:
        """WeLore on a data-aware method reads the spectra it truncates, so the plan needs the
        same statistics as the factorization (gathered in the planning pass)."""
        if cfg.allocation == "welore":
            return frozenset(self.needs_for(cfg))
        return frozenset()

    def plan_measure(self, target: Target, cfg: Any) -> torch.Tensor:
        return self.spectrum(target, cfg).cpu()

    def plan(self, weights: dict[str, torch.Tensor], cfg: Any,
             fisher: dict[str, torch.Tensor] | None = None,
             dtype: torch.dtype = torch.float16,
             measures: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """WeLore allocation when asked for; uniform ranks need no global pass. ``measures``:
        the spectra the method truncates (plan_measure), when it reads statistics."""
        if cfg.allocation != "welore":
            return {}
        if getattr(cfg, "rank", None) is not None:
            raise UserError("allocation 'welore' chooses the ranks itself: drop `rank` "
                            "or use allocation 'uniform'.")
        if self.plan_needs_for(cfg):
            if measures is None:
                raise ValueError(f"allocation 'welore' for {self.name} reads the spectra it "
                                 f"truncates, which need calibration statistics; none were "
                                 f"measured (run it through the pipeline)")
            shapes = {nm: tuple(weights[nm].shape) for nm in weights}
            ranks, info = welore_ranks({nm: measures[nm] for nm in weights}, cfg.ratio,
                                       shapes=shapes)
        else:
            ranks, info = welore_ranks(weights, cfg.ratio)
        return {name: {"rank": r, "welore": "N-LRC" if r is None else "LRC",
                       "welore_threshold": info["threshold"]}
                for name, r in ranks.items()}

    def target_rank(self, target: Target, cfg: Any) -> int | None:
        """The rank for this target, or None when the plan keeps it dense (N-LRC)."""
        m, n = target.weight.shape
        if cfg.allocation == "welore":
            if "rank" not in target.plan:
                raise ValueError(f"{target.name}: no WeLore rank in the plan (plan() not run?)")
            return target.plan["rank"]
        if getattr(cfg, "lowrank_bits", None) is not None:
            return _rank_in_bytes(target, cfg)
        rank = cfg.rank if getattr(cfg, "rank", None) is not None else \
            rank_from_ratio(m, n, cfg.ratio, name=target.name)
        if rank * (m + n) >= m * n:
            largest = (m * n - 1) // (m + n)
            raise UserError(f"rank {rank} for {target.name} ({m}x{n}) keeps {rank * (m + n)} "
                            f"of {m * n} parameters, no saving: use a rank <= {largest} "
                            f"(or ratio > 0).")
        return rank

    def compress(self, target: Target, cfg: Any,
                 previous: CompressedLinear | None = None) -> Compressed:
        m, n = target.weight.shape
        base = {"allocation": cfg.allocation}
        if "welore" in target.plan:
            base["welore"] = target.plan["welore"]
        rank = self.target_rank(target, cfg)
        if rank is None:
            part = DensePart(target.weight.detach().to(target.dtype, copy=True))
            return Compressed(CompressedLinear(m, n, [part], target.bias),
                              {**base, "rank": None, "kept_params": part.stored_numel()})
        A, B, info = self.factorize(target, cfg, rank)
        if getattr(cfg, "lowrank_bits", None) is None:   # (WeLore's config has no such field)
            part = LowRankPart(A.to(target.dtype), B.to(target.dtype))
        else:
            part = QuantLowRankPart.from_factors(A, B, cfg.lowrank_bits, cfg.lowrank_group_size)
            info = {**info, "lowrank_bits": cfg.lowrank_bits}
        return Compressed(CompressedLinear(m, n, [part], target.bias),
                          {**base, "rank": rank, "kept_params": part.stored_numel(),
                           "svd_method": cfg.svd_method, **info})


def quantized_factor_bytes(m: int, n: int, rank: int, cfg: Any) -> int:
    """Bytes of rank-``rank`` factors at ``cfg.lowrank_bits``, counted from the part itself
    (built on the meta device: codes, scales and zeros as a checkpoint stores them)."""
    spec = {"type": "qlowrank", "out": m, "in": n, "rank": rank, "bits": cfg.lowrank_bits,
            "group_size": cfg.lowrank_group_size, "sym": False}
    with torch.device("meta"):
        return QuantLowRankPart.from_spec(spec, torch.float16).stored_bytes()


def _rank_in_bytes(target: Target, cfg: Any) -> int:
    """The rank whose quantized factors keep at most (1 - ratio) of the matrix's bytes in its
    storage dtype (an explicit rank: checked to save bytes)."""
    m, n = target.weight.shape
    dense = m * n * torch.empty((), dtype=target.dtype).element_size()
    if getattr(cfg, "rank", None) is not None:
        rank = cfg.rank
        if rank > min(m, n) or quantized_factor_bytes(m, n, rank, cfg) >= dense:
            raise UserError(f"rank {rank} for {target.name} ({m}x{n}) at {cfg.lowrank_bits}-bit "
                            f"factors is no smaller than the dense matrix: lower the rank")
        return rank
    keep = (1.0 - cfg.ratio) * dense
    lo, hi = 0, min(m, n)
    while lo < hi:                 # the largest rank that fits (bytes grow with the rank)
        mid = (lo + hi + 1) // 2
        if quantized_factor_bytes(m, n, mid, cfg) <= keep:
            lo = mid
        else:
            hi = mid - 1
    if lo < 1:
        raise UserError(f"ratio {cfg.ratio} leaves no rank for {target.name} ({m}x{n}) at "
                        f"{cfg.lowrank_bits}-bit factors: lower the ratio")
    return lo
