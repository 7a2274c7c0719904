"""The one place where command-line flags become stage options, for --method and --recipe.

``--method eora`` expands to ``[gptq, eora]`` (a compensation method gets a base stage).
Each flag goes to the LAST stage whose config has that field, so ``--rank`` reaches EoRA
and ``--bits`` the GPTQ base; a flag no stage takes is an error on both paths, ``--base``
with ``--recipe`` included. Works on raw stage mappings: the recipe validates them once.
"""

from __future__ import annotations

from typing import Any

from compressor.core.registry import get_method, stage_class
from compressor.errors import UserError
from compressor.recipe.io import load_yaml

DEFAULT_BASE = "gptq"


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as YAML scalars (4 → int, true → bool), by the
    recipe's loader (no alias bomb on the command line either)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"--set {it!r}: expected key=value, e.g. --set percdamp=0.05")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = load_yaml(v, f"--set {it!r}")
    return out


def stages_for_method(method: str, base: str | None) -> list[dict[str, Any]]:
    """The stage list ``--method`` (and ``--base``) stand for, options not yet routed."""
    cls = get_method(method)
    if base is not None and not cls.uses_previous:
        raise UserError(f"--base applies to compensation methods (eora); {method} stands alone")
    if not cls.uses_previous:
        return [{"method": method}]
    base = base or DEFAULT_BASE
    if get_method(base).uses_previous:
        raise UserError(f"--base {base} is itself a compensation method; pick a quantizer, "
                        f"pruner or SVD")
    return [{"method": base}, {"method": method}]


def route_flags(stages: list[dict[str, Any]], params: dict[str, Any], where: str) -> None:
    """Put each non-None flag into the last stage that accepts it (in place); error if none."""
    for key, value in params.items():
        if value is None:
            continue
        for stage in reversed(stages):
            fields = stage_class(stage.get("method", "")).Config.model_fields
            if key in fields and key != "method":
                stage[key] = value
                break
        else:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} does not apply to {where}; see `svdc methods "
                            f"{stages[-1].get('method')}` for its options")


def with_heal(stages: list[dict[str, Any]], steps: int | None) -> None:
    """``--heal-steps N``: set the recipe's heal stage's steps, or append a heal stage (in
    place, before routing, so ``--set lr=...`` reaches it). None: leave the stages alone."""
    if steps is None:
        return
    for stage in stages:
        if stage.get("method") == "heal":
            stage["steps"] = steps
            return
    stages.append({"method": "heal", "steps": steps})


def stages_from_flags(method: str, base: str | None, params: dict[str, Any],
                      heal_steps: int | None = None) -> list[dict[str, Any]]:
    """``--method`` path: the expanded stage list (plus heal for ``--heal-steps``) with every
    flag routed."""
    stages = stages_for_method(method, base)
    with_heal(stages, heal_steps)
    route_flags(stages, params, " + ".join(s["method"] for s in stages))
    return stages
