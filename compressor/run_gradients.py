"""Gradient statistics inside a compress run (phases.calibrate calls it): loaded from
--fisher-file when it matches the run, else computed over each rank's windows, whole-model or
streamed, summed over ranks, and saved there."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compressor.core.gradient_file import (
    gradient_fingerprint,
    load_gradient_stats,
    save_gradient_stats,
)
from compressor.core.gradients import gradient_stats
from compressor.core.resume import resume_dir_for
from compressor.core.streamed_gradients import streamed_gradient_stats
from compressor.errors import UserError
from compressor.run_eval import _progress_fn

if TYPE_CHECKING:
    from compressor.phases import RunState


def run_gradients(run: "RunState", want: set[str]) -> tuple[dict, dict]:
    """Fisher / |grad| of the targets: loaded from --fisher-file when it matches, else computed
    (and saved there): the whole model's backward, or streamed (one layer resident at a time,
    core/streamed_gradients.py). Each rank back-propagates its own windows; sums are reduced.
    The file is keyed by the windows and target shapes it was made from."""
    recipe, windows, dist = run.recipe, run.windows, run.dist
    g = recipe.gradients
    n = min(g.nsamples or windows.shape[0], windows.shape[0])
    fp = gradient_fingerprint(windows[:n], run.target_shapes)
    if g.fisher_file and Path(g.fisher_file).is_file():
        stats, meta = load_gradient_stats(g.fisher_file, expected_names=run.target_shapes,
                                          expected_meta={"fingerprint": fp})
        missing = [w for w in want if not all(w in stats[name] for name in run.target_names)]
        if missing:
            raise UserError(f"{g.fisher_file} lacks {missing}; delete it or point --fisher-file "
                            "elsewhere to recompute")
        return stats, {"loaded_from": g.fisher_file, **meta}
    local = dist.shard(windows[:n])
    progress = _progress_fn(run.progress, "gradients")
    if run.stream:
        stats, info = streamed_gradient_stats(run.model, run.layers_path, run.layers, local,
                                              run.target_names, set(want), run.context(),
                                              run.source, resume_dir_for(run.output))
    else:
        stats, info = gradient_stats(run.model, local, run.target_names, set(want), run.device,
                                     progress=progress)
        run.model.to("cpu")
    if dist.active:
        stats = dist.reduce_gradient_stats(stats, int(local.shape[0]), n)
        info = {**info, "nsamples": n, "nsamples_per_rank": int(local.shape[0])}
    if g.fisher_file and dist.is_main:
        save_gradient_stats(g.fisher_file, stats, {"model": str(recipe.model), "nsamples": n,
                                                   "seqlen": int(windows.shape[1]),
                                                   "seed": recipe.calibration.seed,
                                                   "fingerprint": fp})
        info = {**info, "saved_to": g.fisher_file}
    return stats, info
