"""CoSpaDi: calibration-guided sparse dictionary learning (DESIGN.md §4).

Each output channel's weight row w_o (in,) is a sparse combination of k shared atoms:
W ≈ C·Dᵀ with D (in, k) dense and C (out, k) holding s non-zeros per row — a union of
s-dimensional subspaces instead of SVD's single k-dimensional one. The objective is the
layer's output error: with XᵀX = LLᵀ, ‖X(W − Ŵ)ᵀ‖ = ‖Lᵀ(W − Ŵ)ᵀ‖, so K-SVD runs on
Ỹ = LᵀWᵀ (in, out; one column per output channel) and the learned D̃ maps back by a
triangular solve, D = L⁻ᵀD̃. The codes are untouched by the map, so they stay sparse.

Budget (parameter-equivalents of the storage dtype): in·k (D) + out·s (values) + each
row's support (a ⌈k/8⌉-byte bit mask, or s indices when fewer bytes) / value bytes; k is
the largest that fits (1 − ratio)·out·in. By default s = max(1, k // 2), the paper's
k/s ≈ 2 operating point. The mask matters: with indices costing a value each, k/s = 2
gives k ≤ the SVD rank r of the same budget, and C·Dᵀ (rank ≤ k) cannot beat the
whitened SVD; with the mask k ≈ 1.2–1.5 r.
Initial dictionary: the top-k left singular vectors of Ỹ (deterministic, and already the
whitened-SVD subspace, so K-SVD starts from the baseline's span and refines it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ..errors import UserError
from ..linalg import whitening
from ..modules.base import CompressedLinear
from ..modules.dictionary import DictionaryPart, support_bytes_per_row, support_encoding
from ..sparse_coding import ksvd
from . import register
from .base import Compressed, Method, MethodConfig, Target

# Entries of the convergence list kept in the report.
MAX_LOGGED_ERRORS = 12
# Default OMP steps per code: s atoms are added ceil(s / OMP_STEPS) at a time. Measured on
# a SmolLM2 gate_proj (k=409, s=204, 2 K-SVD iterations): blocks of 1/4/8/16 atoms gave
# relative errors 0.1725/0.1726/0.1726/0.1727 in 50/21/17/13 s.
OMP_STEPS = 16


class CoSpaDiConfig(MethodConfig):
    ratio: float = Field(0.2, ge=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%), counting the "
        "dictionary, the code values and the code supports (bit masks or indices, "
        "whichever is smaller, at their byte size)."))
    atoms_per_column: int | None = Field(None, ge=1, description=(
        "Non-zeros s per output channel's code. Default: k // 2 for the largest k that "
        "fits, the paper's k/s ≈ 2."))
    iters: int = Field(10, ge=0, description="K-SVD iterations (sparse coding + atom update).")
    omp_block: int | None = Field(None, ge=1, description=(
        "Atoms OMP adds per step (1 = classic OMP, more = generalized OMP: fewer, cheaper "
        "steps). Default: ceil(s / 16), at most 16 steps per code."))
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping added to the Gram diagonal, as a fraction of its mean, before Cholesky."))


def dictionary_cost(out_features: int, in_features: int, k: int, s: int,
                    value_bytes: int) -> float:
    """Stored parameter-equivalents of a (k atoms, s non-zeros per row) dictionary part,
    its support in the smaller encoding (a bit mask or indices)."""
    support = support_bytes_per_row(k, s, support_encoding(k, s))
    return in_features * k + out_features * (s + support / value_bytes)


def dictionary_size(out_features: int, in_features: int, ratio: float, s: int | None,
                    value_bytes: int, name: str = "matrix") -> tuple[int, int]:
    """The largest k (and its s) whose cost fits (1 − ratio)·out·in; UserError if none."""
    budget = (1.0 - ratio) * out_features * in_features + 1e-9

    def s_of(k: int) -> int:
        return s if s is not None else max(1, k // 2)

    lo, hi = 0, math.floor(budget / in_features) + 1      # cost(hi) > budget
    while hi - lo > 1:                                     # cost is increasing in k
        mid = (lo + hi) // 2
        if dictionary_cost(out_features, in_features, mid, s_of(mid), value_bytes) <= budget:
            lo = mid
        else:
            hi = mid
    k = lo
    what = f"{name} ({out_features}x{in_features})"
    if k < 1 or k < s_of(k):
        need = s_of(max(k, 1))
        raise UserError(f"cospadi: ratio {ratio} leaves no dictionary with k >= s={need} "
                        f"atoms for {what}: lower the ratio or atoms_per_column.")
    if s_of(k) > in_features:
        raise UserError(f"cospadi: atoms_per_column {s_of(k)} exceeds the {in_features} "
                        f"input features of {what}: use at most {in_features}.")
    return k, s_of(k)


def _short(errors: list[float]) -> list[float]:
    """At most MAX_LOGGED_ERRORS entries, evenly spaced, always with the first and last."""
    if len(errors) > MAX_LOGGED_ERRORS:
        step = (len(errors) - 1) / (MAX_LOGGED_ERRORS - 1)
        errors = [errors[round(i * step)] for i in range(MAX_LOGGED_ERRORS)]
    return [float(f"{e:.5g}") for e in errors]


@register
class CoSpaDi(Method):
    name = "cospadi"
    summary = ("CoSpaDi: whitened K-SVD dictionary, W ≈ C·Dᵀ with s-sparse codes per output "
               "channel (union of subspaces); minimizes the layer's output error.")
    Config = CoSpaDiConfig
    needs = frozenset({"gram"})

    def compress(self, target: Target, cfg: CoSpaDiConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        W = target.weight
        out_f, in_f = W.shape
        if target.stats.gram is None:
            raise ValueError(f"{target.name}: statistic 'gram' missing (declared in `needs`)")
        value_bytes = torch.empty(0, dtype=target.dtype).element_size()
        k, s = dictionary_size(out_f, in_f, cfg.ratio, cfg.atoms_per_column, value_bytes,
                               target.name)
        L, winfo = whitening(target.stats.gram.to(W.device), cfg.percdamp)
        Y = L.mT @ W.detach().to(torch.float64).mT                     # (in, out) = LᵀWᵀ
        block = cfg.omp_block or math.ceil(s / OMP_STEPS)
        Dw, idx, coef, kinfo = ksvd(Y, k, s, cfg.iters, target.generator, block=block)
        D = torch.linalg.solve_triangular(L.mT, Dw, upper=True)        # D = L⁻ᵀ D̃
        # Unit atoms in the original space keep both factors in range for fp16/bf16
        # (whitening scales atoms by ~1/√ntokens and codes by ~√ntokens).
        norms = torch.linalg.vector_norm(D, dim=0)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        D = D / norms
        coef = coef * norms[idx]
        if not (bool(torch.isfinite(D).all()) and bool(torch.isfinite(coef).all())):
            raise UserError(f"cospadi produced non-finite factors for {target.name}: raise "
                            f"percdamp (now {cfg.percdamp}) or check the calibration data.")
        part = DictionaryPart(D.to(target.dtype), coef.to(target.dtype), idx)
        info: dict[str, Any] = {
            "k": k, "s": s, "iters": cfg.iters, "omp_block": block,
            "support": part.encoding,
            "final_rel_error": float(f"{kinfo['final_rel_error']:.5g}"),
            "rel_errors": _short(kinfo["rel_errors"]),
            "replaced_atoms": kinfo["replaced_atoms"],
            "damp": winfo["damp"], "damp_retries": winfo["retries"],
            "whitening": winfo["method"], "kept_params": part.stored_numel(),
        }
        return Compressed(CompressedLinear(out_f, in_f, [part], target.bias), info)
