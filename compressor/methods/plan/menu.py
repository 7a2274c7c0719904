"""The plan's menu: what a matrix may become, each entry a chain of stage configs (a base
stage, optionally followed by a compensation such as EoRA), validated by the stages' own
config classes, so a menu entry accepts exactly what a recipe stage accepts."""

from __future__ import annotations

from typing import Any

from compressor.core.method import MethodConfig

# The default menu (issue 24): GPTQ at 2/3/4/8 bits and groups 32/64/128; RTN at 3/4/8 bits
# and the same groups; GPTQ 3/4 bit with an EoRA path; GWQ with 0.5-1% gradient outliers;
# LQ-LoRA's NF codes with a small low-rank part; whitened SVD with 8-bit factors; the dense
# matrix. Chosen from the storage each method can write, not from any evaluation: the ILP
# picks among them on calibration data.
DEFAULT_MENU: list[list[dict[str, Any]]] = (
    [[{"method": "gptq", "bits": b, "group_size": g}] for b in (2, 3, 4, 8) for g in (32, 64, 128)]
    # RTN too: on weights that already sit on a grid (a checkpoint converted from a quantized
    # file) rounding to it is exact where GPTQ's error feedback moves them off it
    + [[{"method": "rtn", "bits": b, "group_size": g}] for b in (3, 4, 8) for g in (32, 64, 128)]
    + [[{"method": "gptq", "bits": b, "group_size": 128}, {"method": "eora", "rank": r}]
       for b in (3, 4) for r in (8, 32)]
    + [[{"method": "gwq", "bits": b, "group_size": 128, "outlier_frac": f, "inner": "gptq"}]
       for b, f in ((3, 0.01), (4, 0.005))]
    + [[{"method": "lqlora", "mixed": False, "bits": b, "block_size": 64, "rank": 8}]
       for b in (3, 4)]
    + [[{"method": "whitened-svd", "ratio": r, "lowrank_bits": 8}] for r in (0.5, 0.7)]
    + [[{"method": "dense"}]]
)


def parse_entry(entry: Any, where: str) -> list[MethodConfig]:
    """One menu entry (a stage dict or a list of them) as validated stage configs."""
    from compressor.core.registry import get_method
    from compressor.core.stage_rules import check_stage_order
    stages = [entry] if isinstance(entry, dict) else entry
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise ValueError(f"{where}: a menu entry is a stage ({{method: gptq, bits: 4}}) or a "
                         f"list of stages ([{{method: gptq}}, {{method: eora, rank: 16}}])")
    out = []
    for k, st in enumerate(stages):
        name = st.get("method")
        if not isinstance(name, str):
            raise ValueError(f"{where}, stage {k + 1}: every stage names its `method`")
        if name == "plan":
            raise ValueError(f"{where}: a plan cannot be on a plan's menu")
        cls = get_method(name)       # a UserError naming the nearest method for a typo
        try:
            out.append(cls.Config.model_validate(st))
        except Exception as e:       # pydantic's ValidationError, one line
            first = str(e).splitlines()
            raise ValueError(f"{where}, stage {k + 1} ({name}): "
                             f"{' '.join(first[1:3]) if len(first) > 1 else e}") from None
    for c in out:
        if getattr(c, "allocation", None) == "welore" or getattr(c, "mixed", False):
            raise ValueError(f"{where} ({c.method}): a menu entry compresses one matrix at a time; "
                             f"its own global allocation cannot run inside the plan: use "
                             f"{'allocation: uniform' if c.method != 'lqlora' else 'mixed: false'}")
    check_stage_order([c.method for c in out], random_calibration=False)
    return out


def entry_name(stages: list[MethodConfig]) -> str:
    """A short stable label: each stage's method with the options the entry sets, in its
    order, e.g. 'gptq(bits=3,group_size=64)+eora(rank=32)'."""
    def one(c: MethodConfig) -> str:
        opts = c.model_dump(include=set(c.model_fields_set) - {"method"})
        text = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in opts.items())
        return c.method + (f"({text})" if text else "")
    return "+".join(one(c) for c in stages)
