"""One entry point: ``compress(recipe)`` runs load → data → gradients → plan → layers → write → eval.

The CLI and the scripts call this; nothing here parses flags or prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compressor import phases
from compressor.core.distributed import env_rank
from compressor.core.resume import discard_unfinished, resume_dir_for
from compressor.errors import UserError
from compressor.progress import ProgressSink
from compressor.recipe import Recipe
from compressor.safety.guard import guarded_output, inputs_of


@dataclass
class CompressResult:
    output: Path
    report: dict[str, Any]
    model: torch.nn.Module


def compress(recipe: Recipe, *, force: bool = False, resume: bool = False,
             progress: ProgressSink | None = None, command: str = "",
             keep_model: bool = False, trust_remote_code: bool = False,
             recipe_file: str | Path | None = None, stream: bool = False) -> CompressResult:
    """Check the output (and the names svdc makes beside it) before anything loads, then
    hold its lock for the whole run; a run that fails before any layer is finished leaves no
    resume folder.
    ``stream``: read and write one decoder layer at a time (models larger than RAM); every
    method, stage and option runs the same (phases.py)."""
    if not recipe.model:
        raise UserError("no model given: pass MODEL on the command line or set `model:` in the recipe")
    if not recipe.output:
        raise UserError("no output folder given: pass -o/--output or set `output:` in the recipe")
    output = Path(recipe.output)
    if env_rank() != 0:   # rank 0 checks, locks and writes the output; the others compute
        return _compress(recipe, output, force=force, resume=resume, progress=progress,
                         command=command, keep_model=keep_model,
                         trust_remote_code=trust_remote_code, stream=stream)
    uses = (recipe.model, recipe_file, recipe.calibration.dataset, recipe.gradients.fisher_file,
            *(getattr(s, "measures_file", None) for s in recipe.stages))
    with guarded_output(output, force, inputs_of(*uses), uses=uses):
        try:
            return _compress(recipe, output, force=force, resume=resume, progress=progress,
                             command=command, keep_model=keep_model,
                             trust_remote_code=trust_remote_code, stream=stream)
        except BaseException:
            # an error, Ctrl-C or SIGTERM before a layer finished strands nothing (after one,
            # the folder stays for --resume and the CLI's message says so)
            discard_unfinished(resume_dir_for(output))
            raise


def _compress(recipe: Recipe, output: Path, *, force: bool, resume: bool,
              progress: ProgressSink | None, command: str, keep_model: bool,
              trust_remote_code: bool, stream: bool) -> CompressResult:
    run = phases.setup(recipe, output, progress, stream)
    phases.load(run, trust_remote_code)
    phases.calibrate(run)
    phases.plan(run)
    if not phases.layers(run, resume):          # a rank other than 0: rank 0 writes
        return CompressResult(output=output, report={}, model=None)
    phases.heal(run, resume)
    report = phases.write(run, force, command)
    return CompressResult(output=output, report=report, model=run.model if keep_model else None)
