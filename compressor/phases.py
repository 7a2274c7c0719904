"""The phases of one compress run, in order: set up, load, calibrate, plan, layers, heal,
write. Each reads and fills one RunState, so api.compress reads as the list of phases."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compressor import __version__
from compressor.accounting import (
    bits_split,
    bytes_before_in,
    model_footprint,
    totals,
    written_entries,
)
from compressor.atomic import atomic_dir
from compressor.checkpoint import round_uncompressed, save_compressed
from compressor.core.distributed import Distributed, run_on_main
from compressor.core.gradients import GRAD_STATS
from compressor.core.pipeline import numerics_summary, sequential_compress
from compressor.core.planning import planning_pass
from compressor.core.resume import LayerCheckpoints, fingerprint, resume_dir_for
from compressor.core.stages import Stage, stage_needs
from compressor.errors import UserError
from compressor.heal.stage import HealJob, split_post_stages
from compressor.models import resolve_storage_dtype
from compressor.progress import NullProgress, ProgressSink
from compressor.recipe import Recipe, dump_recipe
from compressor.report import write_report
from compressor.run_eval import _progress_fn, check_expectations, evaluate_all
from compressor.runtime import StageTimer, machine, peak_memory, versions
from compressor.safety.limits import calibration_seqlen, check_ranks, warn_few_tokens
from compressor.safety.memory import check_activation_memory


@dataclass
class RunState:
    """Everything one run has built so far; each phase fills its part."""

    recipe: Recipe
    output: Path
    progress: ProgressSink
    device: torch.device
    dist: Any
    recipe_json: str
    timer: StageTimer = field(default_factory=StageTimer)
    stages: list[Stage] = field(default_factory=list)
    post_stages: list[Stage] = field(default_factory=list)
    needs: frozenset[str] = frozenset()
    model: Any = None
    tokenizer: Any = None
    minfo: dict[str, Any] = field(default_factory=dict)
    compute_dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype = torch.float32
    source_dtype: torch.dtype = torch.float32   # the checkpoint's own (for "bytes before")
    layers_path: str = ""
    layers: Any = None
    target_names: list[str] = field(default_factory=list)
    before_targets: tuple[int, int] = (0, 0)
    before_model: tuple[int, int] = (0, 0)
    seqlen: int = 0
    windows: Any = None
    dense_eval: dict[str, Any] | None = None
    grad_stats: dict[str, dict[str, torch.Tensor]] | None = None
    grad_info: dict[str, Any] | None = None
    ckpt: Any = None
    heal_job: Any = None
    heal_report: dict[str, Any] | None = None
    result: Any = None

    def targets_of(self, layer):
        from compressor.models import target_linears
        t = self.recipe.targets
        return target_linears(layer, include=t.include, exclude=t.exclude)


def setup(recipe: Recipe, output: Path, progress: ProgressSink | None) -> RunState:
    """Device, ranks (a no-op alone) and the stages, before anything loads."""
    from compressor.models import resolve_device
    device = resolve_device(recipe.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recipe_json = json.dumps(recipe.model_dump(mode="json", exclude={"output", "eval", "expect"}),
                             sort_keys=True)
    dist = Distributed.start(device, recipe_json + __version__)
    run = RunState(recipe=recipe, output=output, device=dist.device, dist=dist,
                   progress=(progress or NullProgress()) if dist.is_main else NullProgress(),
                   recipe_json=recipe_json)
    stages, run.post_stages = split_post_stages([Stage.of(cfg) for cfg in recipe.stages])
    run.stages, run.needs = stages, stage_needs(stages)
    if stages[0].method.uses_previous:
        raise UserError(f"{stages[0].name} compensates an earlier stage; put a base stage before "
                        f"it (e.g. --base gptq, or a gptq stage first in the recipe)")
    return run


def load(run: RunState, trust_remote_code: bool) -> None:
    """The model, its target linears and what they weigh before compression."""
    from compressor.models import decoder_layers, load_model
    r = run.recipe
    with run.timer("load"):
        model, run.tokenizer, minfo = load_model(r.model, dtype=r.dtype, device="cpu",
                                                 compute_device=run.device,
                                                 trust_remote_code=trust_remote_code)
    run.model, run.minfo = model, (minfo if isinstance(minfo, dict) else vars(minfo))
    run.compute_dtype = next(model.parameters()).dtype
    run.storage_dtype = resolve_storage_dtype(r.storage_dtype, run.minfo.get("checkpoint_dtype"),
                                              run.compute_dtype)
    run.layers_path, run.layers = decoder_layers(model)
    run.target_names = [f"{run.layers_path}.{i}.{rel}" for i, layer in enumerate(run.layers)
                        for rel in run.targets_of(layer)]
    if not run.target_names:
        raise UserError(f"no linear layers matched the target patterns "
                        f"include={r.targets.include} exclude={r.targets.exclude}")
    run.source_dtype = resolve_storage_dtype("auto", run.minfo.get("checkpoint_dtype"),
                                             run.compute_dtype)   # what the checkpoint holds
    run.before_model = model_footprint(model, run.source_dtype)
    tw = [model.get_submodule(n).weight for n in run.target_names]
    numel = sum(w.numel() for w in tw)
    run.before_targets = (numel, numel * run.source_dtype.itemsize)
    check_ranks(r.stages, {n: tuple(w.shape) for n, w in zip(run.target_names, tw)})


def calibrate(run: RunState) -> None:
    """Calibration windows, task checks, the dense evaluation and the gradient statistics."""
    from compressor.data import calibration_windows
    r, cal = run.recipe, run.recipe.calibration
    run.seqlen = calibration_seqlen(cal, run.model.config)
    check_activation_memory(cal.nsamples, run.seqlen, run.minfo.get("hidden_size"),
                            run.compute_dtype.itemsize)
    with run.timer("data"):
        run.windows = calibration_windows(run.tokenizer, cal.dataset, cal.nsamples, run.seqlen,
                                          cal.seed)
    if run.dist.is_main:                            # one warning, not one per rank
        warn_few_tokens(r.stages, int(run.windows.numel()),
                        max(run.model.get_submodule(n).weight.shape[1] for n in run.target_names))
    if r.eval and r.eval.tasks:
        from compressor.tasks import _lm_eval, task_spec
        _lm_eval()                                  # fail before hours of compression, not after
        for t in r.eval.tasks:
            task_spec(t)
    if r.eval and r.eval.dense:
        with run.timer("eval_dense"):   # the uncompressed model on the same windows and tasks
            run.dense_eval = evaluate_all(run.model, run.tokenizer, r, run.seqlen, run.device,
                                          run.progress, "dense ")
    want = set(run.needs & GRAD_STATS)
    if want:
        with run.timer("gradients"):
            run.grad_stats, run.grad_info = _gradients(r, run.model, run.windows, run.target_names,
                                                       want, run.device, run.progress, run.dist)


def plan(run: RunState) -> None:
    """Each stage's global plan (rank / bit allocation); stages whose plan needs calibration
    statistics (LQ-LoRA's output-error ILP, WeLore on whitened spectra) get one pass first."""
    from compressor.models import linear_kind
    with run.timer("plan"):
        weights = DeviceWeights({n: run.model.get_submodule(n).weight for n in run.target_names},
                                run.device)
        fisher = ({n: g["fisher"] for n, g in run.grad_stats.items() if "fisher" in g}
                  if run.grad_stats else None)
        measures, plan_pass_s = planning_pass(
            run.model, run.layers_path, run.layers, targets_of=run.targets_of,
            kind_of=linear_kind, windows=run.windows, stages=run.stages, device=run.device,
            seed=run.recipe.calibration.seed, grad_stats=run.grad_stats,
            storage_dtype=run.storage_dtype, progress=run.progress)
        if measures:
            run.timer.seconds["plan.data_pass"] = plan_pass_s
        for k, st in enumerate(run.stages):
            st.plan = st.method.run_plan(weights, st.cfg, fisher, dtype=run.storage_dtype,
                                         measures=measures.get(k)) or {}


def layers(run: RunState, resume: bool) -> bool:
    """The sequential pass (per-layer checkpoints, ranks); False on a rank other than 0,
    which stops there: rank 0 writes and evaluates alone."""
    from compressor.models import linear_kind
    dist, cal = run.dist, run.recipe.calibration
    run_fp = fingerprint(run.minfo, run.windows, run.recipe_json, __version__)
    dist.agree("run fingerprint (model, calibration windows, recipe)", run_fp,
               "every rank must load the same model files and calibration data")
    run.ckpt = run_on_main(dist, lambda: LayerCheckpoints(resume_dir_for(run.output), run_fp,
                                                          resume), "the resume check")
    if run.post_stages and dist.is_main:   # heal's windows and teacher, before compression
        with run.timer("heal_prepare"):
            run.heal_job = HealJob.prepare(run.post_stages[0].cfg, run.model, run.tokenizer,
                                           run.windows, cal.dataset, cal.seed, run.device,
                                           run.ckpt.folder, resume, run.progress)
    with run.timer("layers"):
        run.result = sequential_compress(
            run.model, run.layers_path, run.layers, targets_of=run.targets_of,
            kind_of=linear_kind, windows=dist.shard(run.windows), stages=run.stages,
            needs=run.needs, device=run.device, seed=cal.seed, grad_stats=run.grad_stats,
            progress=run.progress, resume=run.ckpt, storage_dtype=run.storage_dtype, dist=dist)
        dist.close()
        if not dist.is_main:
            return False
        round_uncompressed(run.model, run.storage_dtype)   # evaluate what the file holds
    bytes_before_in(run.result.records, run.source_dtype)
    run.timer.seconds.update({f"layers.{k}": v for k, v in run.result.stage_seconds.items()})
    return True


def heal(run: RunState, resume: bool) -> None:
    """The heal post stage: perplexity before (when the recipe evaluates), then training."""
    if run.heal_job is None:
        return
    r, eval_before = run.recipe, None
    if r.eval and run.heal_job.cfg.steps > 0:
        with run.timer("eval_before_heal"):
            eval_before = evaluate_all(run.model, run.tokenizer, r, run.seqlen, run.device,
                                       run.progress)["perplexity"]
    with run.timer("heal"):
        run.heal_report = run.heal_job.run(run.model, run.device, r.calibration.seed,
                                           run.ckpt.folder, resume, run.progress)
    run.heal_report["eval_before"] = eval_before


def report_header(run: RunState, command: str) -> dict[str, Any]:
    """What was run, on what, and what happened per module (before the write and the eval)."""
    r, cal, w = run.recipe, run.recipe.calibration, run.windows
    return {
        "svdc_version": __version__, "command": command, "recipe": r.model_dump(mode="json"),
        "model": {k: (str(v) if isinstance(v, Path) else v) for k, v in run.minfo.items()},
        "device": str(run.device), "dtype": str(run.compute_dtype).removeprefix("torch."),
        "storage_dtype": str(run.storage_dtype).removeprefix("torch."),
        "calibration": {"dataset": cal.dataset, "nsamples": int(w.shape[0]),
                        "seqlen": int(w.shape[1]), "seed": cal.seed},
        "gradients": run.grad_info, "resumed_layers": run.ckpt.resumed_layers,
        "distributed": run.dist.info(), "heal": run.heal_report,
        "modules": [m.to_dict() for m in run.result.records],
        "numerics": numerics_summary(run.result.records),
        "versions": versions(), "machine": machine(run.device)}


def write(run: RunState, force: bool, command: str) -> dict[str, Any]:
    """The output folder (atomically), its accounting, the evaluation and the report."""
    r, report = run.recipe, report_header(run, command)
    with atomic_dir(run.output, force) as tmp:
        with run.timer("write"):
            save_compressed(run.model, run.tokenizer, tmp, run.storage_dtype,
                            {"recipe_fingerprint": run.ckpt.fp})
            (tmp / "recipe.yaml").write_text(dump_recipe(r))
            report["totals"] = totals(written_entries(tmp), run.target_names, run.before_targets,
                                      run.before_model)
            report["totals"]["targets"]["bits_split"] = bits_split(tmp, run.target_names,
                                                                   run.before_targets[0])
        if r.eval:
            with run.timer("eval"):
                ev = evaluate_all(run.model, run.tokenizer, r, run.seqlen, run.device, run.progress)
            report["eval"] = ev["perplexity"]
            if ev["tasks"] is not None:
                report["tasks"] = ev["tasks"]
            if run.dense_eval is not None:
                for e, d in zip(report["eval"], run.dense_eval["perplexity"]):
                    e["dense_ppl"] = d["ppl"]
                report["dense_eval"] = run.dense_eval
        report["expect"] = check_expectations(r, report)
        report["stage_seconds"] = run.timer.seconds
        report["peak_memory"] = peak_memory(run.device)
        write_report(report, tmp)
    run.ckpt.remove()
    return report


class DeviceWeights(Mapping):
    """Target weights for a global plan() pass, each handed out as float32 on the compute
    device when asked for (one at a time, so a 7B model never sits on the GPU twice)."""

    def __init__(self, weights: dict[str, torch.Tensor], device: torch.device):
        self._w, self._device = weights, device

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._w[name].detach().to(device=self._device, dtype=torch.float32)

    def __iter__(self):
        return iter(self._w)

    def __len__(self) -> int:
        return len(self._w)


def _gradients(recipe, model, windows, target_names, want, device, progress, dist=None):
    """Fisher / |grad| of the targets: loaded from --fisher-file when it matches, else computed
    (and saved there). The file is keyed by the windows and target shapes it was made from."""
    from compressor.core.gradient_file import (
        gradient_fingerprint,
        load_gradient_stats,
        save_gradient_stats,
    )
    from compressor.core.gradients import gradient_stats

    g = recipe.gradients
    n = min(g.nsamples or windows.shape[0], windows.shape[0])
    shapes = {name: tuple(model.get_submodule(name).weight.shape) for name in target_names}
    fp = gradient_fingerprint(windows[:n], shapes)
    if g.fisher_file and Path(g.fisher_file).is_file():
        stats, meta = load_gradient_stats(g.fisher_file, expected_names=shapes,
                                          expected_meta={"fingerprint": fp})
        missing = [w for w in want if not all(w in stats[name] for name in target_names)]
        if missing:
            raise UserError(f"{g.fisher_file} lacks {missing}; delete it or point --fisher-file elsewhere to recompute")
        return stats, {"loaded_from": g.fisher_file, **meta}
    if dist is not None and dist.active:   # --- distributed: each rank its shard, sums reduced
        local = dist.shard(windows[:n])
        stats, info = gradient_stats(model, local, target_names, set(want), device,
                                     progress=_progress_fn(progress, "gradients"))
        stats = dist.reduce_gradient_stats(stats, int(local.shape[0]), n)
        info = {**info, "nsamples": n, "nsamples_per_rank": int(local.shape[0])}
    else:
        stats, info = gradient_stats(model, windows[:n], target_names, set(want), device,
                                     progress=_progress_fn(progress, "gradients"))
    model.to("cpu")
    if g.fisher_file and (dist is None or dist.is_main):
        save_gradient_stats(g.fisher_file, stats, {"model": str(recipe.model), "nsamples": n,
                                                   "seqlen": int(windows.shape[1]),
                                                   "seed": recipe.calibration.seed, "fingerprint": fp})
        info = {**info, "saved_to": g.fisher_file}
    return stats, info
