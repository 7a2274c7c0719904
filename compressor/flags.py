"""Turn `svdc compress --method M --bits 4 --rank 64 ...` into recipe stages.

A method that compensates an earlier stage (EoRA) expands to [base, method]. Each flag
goes to the LAST stage whose config has that field (so `--rank` reaches EoRA, `--bits` the
GPTQ base); a flag no stage accepts is an error, never silently dropped.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import UserError
from .methods import get_method

DEFAULT_BASE = "gptq"


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as YAML scalars (4 → int, true → bool)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"--set {it!r}: expected key=value, e.g. --set percdamp=0.05")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def stages_from_flags(method: str, base: str | None, params: dict[str, Any]) -> list[dict[str, Any]]:
    cls = get_method(method)
    names = [base or DEFAULT_BASE, method] if cls.uses_previous else [method]
    if base and not cls.uses_previous:
        raise UserError(f"--base applies to compensation methods (eora); {method} stands alone")
    if len(names) == 2 and get_method(names[0]).uses_previous:
        raise UserError(f"--base {names[0]} is itself a compensation method; pick a quantizer, pruner or SVD")
    stages: list[dict[str, Any]] = [{"method": n} for n in names]
    fields = [set(get_method(n).Config.model_fields) for n in names]
    for key, value in params.items():
        if value is None:
            continue
        for i in reversed(range(len(names))):
            if key in fields[i]:
                stages[i][key] = value
                break
        else:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} does not apply to {' + '.join(names)}; "
                            f"see `svdc methods {method}` for its options")
    return stages
