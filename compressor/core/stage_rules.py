"""The rules on stage order, in one place (the recipe validates every recipe with them, flags
and YAML alike): a compensation stage (EoRA) follows a base stage; post stages (heal) come
after every compression stage, at least one of those first, each post stage once, and not on
random-token calibration (heal trains on text); a stage that chooses whole compressions
(plan) is the only compression stage."""

from __future__ import annotations

from compressor.core.registry import is_post_stage, stage_class


def check_stage_order(names: list[str], random_calibration: bool) -> None:
    """ValueError naming the stage that breaks a rule and the fix."""
    post = [is_post_stage(n) for n in names]
    if post[0]:
        raise ValueError(f"stage 1 ({names[0]}) trains what a compression stage made; put a "
                         f"compression stage before it (e.g. --method whitened-svd "
                         f"--heal-steps 200)")
    if stage_class(names[0]).uses_previous:
        raise ValueError(f"stage 1 ({names[0]}) compensates an earlier stage; put a base stage "
                         f"before it (e.g. --base gptq, or a gptq stage first in the recipe)")
    for i in range(1, len(post)):
        if post[i - 1] and not post[i]:
            raise ValueError(f"stage {i + 1} ({names[i]}) comes after the post stage "
                             f"{names[i - 1]}; post stages (heal) go last")
    if any(post) and random_calibration:
        raise ValueError("heal trains on windows of the calibration text, and "
                         "calibration.dataset 'random' has none: calibrate on builtin, "
                         "wikitext2, c4 or a text file, or drop the heal stage")
    sole = [n for i, n in enumerate(names) if not post[i] and getattr(stage_class(n), "sole_stage", False)]
    if sole and sum(not p for p in post) > 1:
        raise ValueError(f"{sole[0]} chooses each matrix's whole compression (its menu holds the "
                         f"chains, e.g. [{{method: gptq}}, {{method: eora}}]): make it the only "
                         f"compression stage (a post stage such as heal may follow)")
    dup = [n for i, n in enumerate(names) if post[i] and names.index(n) != i]
    if dup:
        raise ValueError(f"stage {names.index(dup[0], names.index(dup[0]) + 1) + 1} "
                         f"({dup[0]}) appears twice; a recipe has at most one")
