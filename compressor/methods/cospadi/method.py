"""CoSpaDi: calibration-guided sparse dictionary learning (README, Methods).

Each output channel's weight row w_o (in,) is a sparse combination of k shared atoms:
W ≈ C·Dᵀ with D (in, k) dense and C (out, k) holding s non-zeros per row, a union of
s-dimensional subspaces instead of SVD's single k-dimensional one. The objective is the
layer's output error: with XᵀX = LLᵀ, ‖X(W − Ŵ)ᵀ‖ = ‖Lᵀ(W − Ŵ)ᵀ‖, so K-SVD runs on
Ỹ = LᵀWᵀ (in, out; one column per output channel) and the learned D̃ maps back by a
triangular solve, D = L⁻ᵀD̃. The codes are untouched by the map, so they stay sparse.

Budget (parameter-equivalents of the storage dtype): in·k (D) + out·s (values) + each
row's support (a ⌈k/8⌉-byte bit mask, or s indices when fewer bytes) / value bytes; k is
the largest that fits (1 − ratio)·out·in. By default s = max(1, k // 2), the paper's
k/s ≈ 2 operating point. With indices costing a value each, k/s = 2 gives k ≤ the SVD rank
r of the same budget, and C·Dᵀ (rank ≤ k) cannot beat the whitened SVD; with the mask
k ≈ 1.2–1.5 r. Initial dictionary: the top-k left singular vectors of Ỹ (the
whitened-SVD subspace), so the solver starts from the baseline's span and refines it.
Solver (``solver``): "fast" (default, primitives.fast_dictionary): batched GEMM steps (MOD
dictionary update, conjugate-gradient refits, thresholded support updates, early stop),
never worse on the objective than its warm start; "ksvd": the classic K-SVD with OMP and a
per-atom sweep, ~15x more CPU for the same objective on SmolLM2.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from compressor.core.method import Method, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.errors import UserError
from compressor.parts.base import CompressedLinear
from compressor.parts.dictionary import DictionaryPart
from compressor.primitives.fast_dictionary import fast_ksvd
from compressor.primitives.ksvd import ksvd
from compressor.primitives.linalg import whitening

from .config import CoSpaDiConfig
from .sizing import dictionary_size

# Entries of the convergence list kept in the report.
MAX_LOGGED_ERRORS = 12


# Default OMP steps per code: s atoms are added ceil(s / OMP_STEPS) at a time. Measured on
# a SmolLM2 gate_proj (k=409, s=204, 2 K-SVD iterations): blocks of 1/4/8/16 atoms gave
# relative errors 0.1725/0.1726/0.1726/0.1727 in 50/21/17/13 s.
OMP_STEPS = 16
# Default iterations per solver. Chosen on the calibration-side objective of SmolLM2 layer 3
# (relative whitened error, BENCHMARKS.md CoSpaDi section): the fast solver at 16 iterations
# is at or below K-SVD's at 10 on every linear of the layer.
DEFAULT_ITERS = {"fast": 16, "ksvd": 10}


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
        gram = require_stat(target, "gram")
        value_bytes = torch.empty(0, dtype=target.dtype).element_size()
        k, s = dictionary_size(out_f, in_f, cfg.ratio, cfg.atoms_per_column, value_bytes,
                               target.name)
        L, winfo = whitening(gram.to(W.device), cfg.percdamp)
        Y = L.mT @ W.detach().to(torch.float64).mT                     # (in, out) = LᵀWᵀ
        block = cfg.omp_block or math.ceil(s / OMP_STEPS)
        iters = cfg.iters if cfg.iters is not None else DEFAULT_ITERS[cfg.solver]
        if cfg.solver == "fast":
            Dw, idx, coef, kinfo = fast_ksvd(
                Y, k, s, iters, target.generator, coding=cfg.coding,
                cg_steps=cfg.cg_steps, tol=cfg.tol, block=block,
                dtype=getattr(torch, cfg.precision))
        else:
            Dw, idx, coef, kinfo = ksvd(Y, k, s, iters, target.generator, block=block)
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
            "k": k, "s": s, "solver": cfg.solver, "iters": kinfo["iters"], "omp_block": block,
            "support": part.encoding,
            "final_rel_error": float(f"{kinfo['final_rel_error']:.5g}"),
            "rel_errors": _short(kinfo["rel_errors"]),
            "replaced_atoms": kinfo["replaced_atoms"],
            **{key: (float(f"{kinfo[key]:.5g}") if isinstance(kinfo[key], float) else kinfo[key])
               for key in ("best_iter", "start_rel_error") if key in kinfo},
            "damp": winfo["damp"], "damp_retries": winfo["retries"],
            "whitening": winfo["method"], "kept_params": part.stored_numel(),
        }
        return Compressed(CompressedLinear(out_f, in_f, [part], target.bias), info)
