"""The plan stage: every target matrix gets one menu candidate, chosen by an ILP.

Planning pass (the uncompressed model's calibration statistics, core/planning.py): each
candidate compresses each target; its price is the bytes it writes and its error the
Fisher-weighted output error tr(D_F ΔW G ΔWᵀ) on the target's Gram (``error``). plan()
solves the multiple-choice knapsack (primitives/knapsack.py): minimal summed error with the
written bits per weight over the targets at most ``bits``. The sequential pass then runs
the chosen candidate on the inputs of the already compressed layers, as the candidate's
own stages would, and reports its error there beside the planned one.

Candidates share each Gram's factorizations: each stage method is one instance for the
whole menu, and GPTQ's Hessian, EoRA's eigenbasis and the whitenings are cached per Gram
(SharedInputCache) inside it, so every GPTQ width and group size, and q/k/v, reuse one
factorization.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.measures import output_error, weight_bytes
from compressor.core.method import Method, MethodConfig, fisher_output_row_weights, require_stat
from compressor.core.pipeline import run_chain
from compressor.core.registry import get_method, register
from compressor.core.types import Compressed, Target
from compressor.errors import UserError
from compressor.parts.base import CompressedLinear
from compressor.primitives.knapsack import ilp_allocate

from .config import PlanConfig


@register
class Plan(Method):
    name = "plan"
    summary = ("A size budget instead of a method (--target-bits B): each matrix gets the menu "
               "candidate (GPTQ bits/groups, +EoRA, GWQ, LQ-LoRA NF, whitened SVD with 8-bit "
               "factors, dense) an ILP picks so the written bits per weight are at most B at "
               "the lowest Fisher-weighted calibration output error.")
    Config = PlanConfig
    sole_stage = True

    def __init__(self) -> None:
        super().__init__()
        # one instance per stage method, shared by every candidate that uses it: GPTQ's
        # Hessian factorization, EoRA's eigenbasis and the whitenings are cached per Gram
        # inside the instance, so the menu's GPTQ widths and groups factor each Gram once
        self._methods: dict[str, Method] = {}

    def needs_for(self, cfg: PlanConfig) -> frozenset[str]:
        need = {"gram"} | ({"fisher_rows"} if cfg.error == "fisher-output" else set())
        for stages in cfg.candidates:
            for c in stages:
                need |= self._method(c).needs_for(c)
        return frozenset(need)

    def plan_needs_for(self, cfg: PlanConfig) -> frozenset[str]:
        return self.needs_for(cfg)

    # bumped whenever the measured error changes meaning: a stored measures file of another
    # version is re-measured (core/plan_cache.py keys on pricing())
    MEASURES_VERSION = 2

    def pricing(self, cfg: PlanConfig) -> dict[str, Any]:
        """What the planning measures depend on (the budget and the cache path do not)."""
        return {**cfg.model_dump(mode="json", exclude={"bits", "measures_file"}),
                "measures_version": self.MEASURES_VERSION}

    def _method(self, c: MethodConfig) -> Method:
        if c.method not in self._methods:
            self._methods[c.method] = get_method(c.method)()
        return self._methods[c.method]

    def _run(self, target: Target, cfg: PlanConfig, j: int) -> Compressed:
        """Candidate j's stages on one target, as a recipe's stages run (pipeline.run_chain):
        a one-entry menu is that recipe."""
        return run_chain(target, [(self._method(c), c, {}) for c in cfg.candidates[j]])

    def _error(self, target: Target, cfg: PlanConfig, module: CompressedLinear) -> float:
        """tr(D ΔW G ΔWᵀ) with D the output channels' gradient energy (see _row_weights)."""
        gram = require_stat(target, "gram")
        delta = target.weight - module.dense_weight().to(target.weight)
        return output_error(delta, gram, self._row_weights(target, cfg, gram))

    @staticmethod
    def _row_weights(target: Target, cfg: PlanConfig, gram: torch.Tensor) -> torch.Tensor | None:
        """The output channels' loss weights (core.measures.loss_row_weights) for
        error: fisher-output; None for the plain output error."""
        if cfg.error != "fisher-output":
            return None
        return fisher_output_row_weights(target, gram)

    def plan_measure(self, target: Target, cfg: PlanConfig) -> dict[str, list[float]]:
        """Every candidate on this target: its error and the bits per weight it writes."""
        errors, bits = [], []
        numel = target.weight.numel()
        for j in range(len(cfg.candidates)):
            module = self._run(target, cfg, j).module
            errors.append(self._error(target, cfg, module))
            bits.append(8.0 * weight_bytes(module) / numel)
        return {"error": errors, "bits": bits}

    def plan(self, weights: dict[str, torch.Tensor], cfg: PlanConfig,
             fisher: dict[str, torch.Tensor] | None = None,
             dtype: torch.dtype = torch.float16,
             measures: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        names = list(weights)
        if measures is None or any(n not in measures for n in names):
            raise ValueError("the plan prices its menu on calibration statistics, and none were "
                             "measured (run it through the pipeline)")
        errors = [measures[n]["error"] for n in names]
        bits = [measures[n]["bits"] for n in names]
        numels = [weights[n].numel() for n in names]
        total = float(sum(numels))
        floor = sum(min(b) * k for b, k in zip(bits, numels)) / total
        if floor > cfg.bits:
            raise UserError(f"the budget {cfg.bits} bits/weight is below the cheapest menu mix "
                            f"({floor:.3f} bits/weight); raise --target-bits or add cheaper "
                            f"entries to the menu")
        choice, info = ilp_allocate(errors, bits, numels, cfg.bits)
        labels = cfg.names()
        return {n: {"candidate": j, "name": labels[j], "planned_error": errors[i][j],
                    "planned_bits": bits[i][j], "menu_errors": list(errors[i]),
                    "menu_bits": list(bits[i]),
                    "ilp_achieved_bits": info["achieved_bits"], "ilp_status": info["status"],
                    "ilp_fallback": info["fallback"]}
                for i, (n, j) in enumerate(zip(names, choice))}

    def compress(self, target: Target, cfg: PlanConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        if "candidate" not in target.plan:
            raise ValueError(f"{target.name}: no plan for this matrix (plan() not run?)")
        j = int(target.plan["candidate"])
        result = self._run(target, cfg, j)
        p = target.plan
        info = dict(result.info)          # the candidate's own fields (bits, rank, ...)
        info.update({"candidate": p["name"], "plan_error": self._error(target, cfg, result.module),
                     "plan_error_planned": p["planned_error"], "planned_bits": p["planned_bits"],
                     "ilp_achieved_bits": p["ilp_achieved_bits"],
                     "menu_errors": p["menu_errors"], "menu_bits": p["menu_bits"]})
        return Compressed(result.module, info)
