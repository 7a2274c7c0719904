"""One entry point: ``compress(recipe)`` runs load → data → gradients → plan → layers → write → eval.

The CLI and the scripts call this; nothing here parses flags or prints.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compressor import __version__
from compressor.accounting import bits_split, model_footprint, totals, written_entries
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
from compressor.runtime import StageTimer, machine, peak_memory, versions
from compressor.safety.guard import guarded_output, inputs_of
from compressor.safety.limits import calibration_seqlen, check_ranks
from compressor.safety.memory import check_activation_memory

log = logging.getLogger("svdc")


@dataclass
class CompressResult:
    output: Path
    report: dict[str, Any]
    model: torch.nn.Module


def compress(recipe: Recipe, *, force: bool = False, resume: bool = False,
             progress: ProgressSink | None = None, command: str = "",
             keep_model: bool = False, trust_remote_code: bool = False,
             recipe_file: str | Path | None = None) -> CompressResult:
    """Check the output before anything loads, then hold its lock for the whole run."""
    if not recipe.model:
        raise UserError("no model given: pass MODEL on the command line or set `model:` in the recipe")
    if not recipe.output:
        raise UserError("no output folder given: pass -o/--output or set `output:` in the recipe")
    output = Path(recipe.output)
    with guarded_output(output, force, inputs_of(recipe.model, recipe_file, recipe.calibration.dataset,
                                                 recipe.gradients.fisher_file)):
        return _compress(recipe, output, force=force, resume=resume, progress=progress,
                         command=command, keep_model=keep_model, trust_remote_code=trust_remote_code)


def _compress(recipe: Recipe, output: Path, *, force: bool, resume: bool,
              progress: ProgressSink | None, command: str, keep_model: bool,
              trust_remote_code: bool) -> CompressResult:
    from compressor.data import calibration_windows
    from compressor.models import (
        decoder_layers,
        linear_kind,
        load_model,
        resolve_device,
        target_linears,
    )

    progress = progress or NullProgress()
    device = resolve_device(recipe.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recipe_json = json.dumps(recipe.model_dump(mode="json", exclude={"output", "eval", "expect"}), sort_keys=True)
    dist = Distributed.start(device, recipe_json + __version__)   # --- distributed (no-op alone)
    device = dist.device
    if not dist.is_main:
        progress = NullProgress()
    timer = StageTimer()
    stages = [Stage.of(cfg) for cfg in recipe.stages]
    stages, post_stages = split_post_stages(stages)   # heal: runs after the sequential pass
    needs = stage_needs(stages)
    if stages[0].method.uses_previous:
        raise UserError(f"{stages[0].name} compensates an earlier stage; put a base stage before it "
                        f"(e.g. --base gptq, or a gptq stage first in the recipe)")

    with timer("load"):
        model, tokenizer, minfo = load_model(recipe.model, dtype=recipe.dtype, device="cpu",
                                             compute_device=device,
                                             trust_remote_code=trust_remote_code)
    minfo_d = minfo if isinstance(minfo, dict) else vars(minfo)
    compute_dtype = next(model.parameters()).dtype
    storage_dtype = resolve_storage_dtype(recipe.storage_dtype, minfo_d.get("checkpoint_dtype"),
                                          compute_dtype)
    layers_path, layers = decoder_layers(model)
    inc, exc = recipe.targets.include, recipe.targets.exclude
    target_names = [f"{layers_path}.{i}.{rel}" for i, layer in enumerate(layers)
                    for rel in target_linears(layer, include=inc, exclude=exc)]
    if not target_names:
        raise UserError(f"no linear layers matched the target patterns include={inc} exclude={exc}")
    before_model = model_footprint(model)
    tw = [model.get_submodule(n).weight for n in target_names]
    before_targets = (sum(w.numel() for w in tw), sum(w.numel() * w.element_size() for w in tw))

    check_ranks(recipe.stages, {n: tuple(w.shape) for n, w in zip(target_names, tw)})
    cal = recipe.calibration
    seqlen = calibration_seqlen(cal, model.config)
    check_activation_memory(cal.nsamples, seqlen, minfo_d.get("hidden_size"), compute_dtype.itemsize)
    with timer("data"):
        windows = calibration_windows(tokenizer, cal.dataset, cal.nsamples, seqlen, cal.seed)
    if recipe.eval and recipe.eval.tasks:
        from compressor.tasks import _lm_eval, task_spec
        _lm_eval()                                  # fail before hours of compression, not after
        for t in recipe.eval.tasks:
            task_spec(t)
    dense_eval = None
    if recipe.eval and recipe.eval.dense:
        with timer("eval_dense"):   # the uncompressed model on the same windows and tasks
            dense_eval = evaluate_all(model, tokenizer, recipe, seqlen, device, progress, "dense ")

    grad_stats, grad_info = None, None
    want = set(needs & GRAD_STATS)
    if want:
        with timer("gradients"):
            grad_stats, grad_info = _gradients(recipe, model, windows, target_names, want, device, progress,
                                               dist)

    with timer("plan"):
        weights = DeviceWeights({n: model.get_submodule(n).weight for n in target_names}, device)
        fisher = ({n: g["fisher"] for n, g in grad_stats.items() if "fisher" in g}
                  if grad_stats else None)
        # Stages whose plan needs calibration statistics (LQ-LoRA's output-error ILP, WeLore on
        # whitened spectra) get them from one pass over the uncompressed model first.
        measures, plan_pass_s = planning_pass(
            model, layers_path, layers,
            targets_of=lambda layer: target_linears(layer, include=inc, exclude=exc),
            kind_of=linear_kind, windows=windows, stages=stages, device=device,
            seed=cal.seed, grad_stats=grad_stats, storage_dtype=storage_dtype, progress=progress)
        if measures:
            timer.seconds["plan.data_pass"] = plan_pass_s
        for k, st in enumerate(stages):
            st.plan = st.method.run_plan(weights, st.cfg, fisher, dtype=storage_dtype,
                                         measures=measures.get(k)) or {}

    run_fp = fingerprint(minfo_d, windows, recipe_json, __version__)
    dist.agree("run fingerprint (model, calibration windows, recipe)", run_fp,
               "every rank must load the same model files and calibration data")
    ckpt = run_on_main(dist, lambda: LayerCheckpoints(resume_dir_for(output), run_fp, resume),
                       "the resume check")
    # --- heal (post stage): windows + teacher cache from the model before it is compressed ---
    heal_job = None
    if post_stages and dist.is_main:
        with timer("heal_prepare"):
            heal_job = HealJob.prepare(post_stages[0].cfg, model, tokenizer, windows, cal.dataset,
                                       cal.seed, device, ckpt.folder, resume, progress)
    # --- end heal ---
    with timer("layers"):
        result = sequential_compress(
            model, layers_path, layers,
            targets_of=lambda layer: target_linears(layer, include=inc, exclude=exc),
            kind_of=linear_kind, windows=dist.shard(windows), stages=stages, needs=needs, device=device,
            seed=cal.seed, grad_stats=grad_stats, progress=progress, resume=ckpt,
            storage_dtype=storage_dtype, dist=dist)
        dist.close()                               # rank 0 writes and evaluates alone
        if not dist.is_main:
            return CompressResult(output=output, report={}, model=None)
        round_uncompressed(model, storage_dtype)   # evaluate what the file holds
    timer.seconds.update({f"layers.{k}": v for k, v in result.stage_seconds.items()})
    # --- heal: perplexity before (when the recipe evaluates), then train the factors ---
    heal_report = None
    if heal_job is not None:
        eval_before = None
        if recipe.eval and heal_job.cfg.steps > 0:
            with timer("eval_before_heal"):
                eval_before = evaluate_all(model, tokenizer, recipe, seqlen, device, progress)
        with timer("heal"):
            heal_report = heal_job.run(model, device, cal.seed, ckpt.folder, resume, progress)
        heal_report["eval_before"] = eval_before
    # --- end heal ---

    report: dict[str, Any] = {
        "svdc_version": __version__, "command": command, "recipe": recipe.model_dump(mode="json"),
        "model": {k: (str(v) if isinstance(v, Path) else v) for k, v in minfo_d.items()},
        "device": str(device), "dtype": str(compute_dtype).removeprefix("torch."),
        "storage_dtype": str(storage_dtype).removeprefix("torch."),
        "calibration": {"dataset": cal.dataset, "nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
                        "seed": cal.seed},
        "gradients": grad_info, "resumed_layers": ckpt.resumed_layers, "distributed": dist.info(),
        "heal": heal_report,
        "modules": [r.to_dict() for r in result.records],
        "numerics": numerics_summary(result.records),
        "versions": versions(), "machine": machine(device)}
    with atomic_dir(output, force) as tmp:
        with timer("write"):
            save_compressed(model, tokenizer, tmp, storage_dtype, {"recipe_fingerprint": ckpt.fp})
            (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
            report["totals"] = totals(written_entries(tmp), target_names, before_targets, before_model)
            report["totals"]["targets"]["bits_split"] = bits_split(tmp, target_names, before_targets[0])
        if recipe.eval:
            with timer("eval"):
                ev = evaluate_all(model, tokenizer, recipe, seqlen, device, progress)
            report["eval"] = ev["perplexity"]
            if ev["tasks"] is not None:
                report["tasks"] = ev["tasks"]
            if dense_eval is not None:
                for e, d in zip(report["eval"], dense_eval["perplexity"]):
                    e["dense_ppl"] = d["ppl"]
                report["dense_eval"] = dense_eval
        report["expect"] = check_expectations(recipe, report)
        report["stage_seconds"] = timer.seconds
        report["peak_memory"] = peak_memory(device)
        write_report(report, tmp)
    ckpt.remove()
    return CompressResult(output=output, report=report, model=model if keep_model else None)


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


def eval_split(recipe: Recipe, dataset: str) -> str | None:
    """The split a compress-time evaluation scores: the recipe's, else a local file's held-out
    test share when it is also the calibration file (no document scored was calibrated on),
    else the source's default (a local file whole, a named source's test split)."""
    from compressor.data import is_local_source
    ev = recipe.eval
    if ev is not None and ev.split is not None:
        return ev.split
    if is_local_source(dataset) and is_local_source(recipe.calibration.dataset):
        same = Path(dataset).expanduser().resolve() == Path(recipe.calibration.dataset).expanduser().resolve()
        return "test" if same else "all"
    return None


def evaluate_all(model, tokenizer, recipe: Recipe, calib_seqlen: int, device, progress,
                 label: str = "") -> dict[str, Any]:
    """Perplexity on every eval dataset and, when the recipe names tasks, the lm-eval tasks:
    ``{"perplexity": [...], "tasks": {...} | None}``."""
    from compressor.evaluate import evaluate

    ev = recipe.eval
    assert ev is not None
    model.to(device)
    out = []
    try:
        for ds in ev.datasets:
            res = evaluate(model, tokenizer, ds, ev.seqlen or calib_seqlen, max_windows=ev.max_windows,
                           device=str(device), split=eval_split(recipe, ds),
                           progress=_progress_fn(progress, f"{label}eval {ds}"))
            if not math.isfinite(res["ppl"]):
                raise FloatingPointError(f"perplexity on {ds} is not finite")
            out.append(res)
        tasks = None
        if ev.tasks:
            from compressor.tasks import run_tasks
            tasks = run_tasks(model, tokenizer, list(ev.tasks), limit=ev.task_limit,
                              batch_size=ev.task_batch_size, seed=recipe.calibration.seed)
    finally:
        model.to("cpu")
    return {"perplexity": out, "tasks": tasks}


def _progress_fn(progress: ProgressSink, stage: str):
    state = {"started": False}

    def fn(i: int, n: int) -> None:
        if not state["started"]:
            progress.start(stage, n, "window")
            state["started"] = True
        progress.advance(stage, 1)
        if i + 1 >= n:
            progress.finish(stage)
    return fn


def metrics_of(report: dict[str, Any]) -> dict[str, float]:
    """Flat metric names that `expect:` blocks may name."""
    m: dict[str, float] = {}
    t = report.get("totals", {})
    if t:
        m["bits_per_weight"] = t["targets"]["bits_per_weight"]
        m["params_kept"] = t["targets"]["params_kept"]
        m["bytes"] = float(t["model"]["bytes_after"])
        m["target_bytes"] = float(t["targets"]["bytes_after"])
    for e in report.get("eval") or []:
        m[f"ppl.{e['dataset']}"] = e["ppl"]
    for row in (report.get("tasks") or {}).get("tasks", []):
        for k, v in row["metrics"].items():
            m[f"task.{row['task']}.{k}"] = v
    errs = [r["output_rel_err"] for r in report.get("modules", []) if r["output_rel_err"] is not None]
    if errs:
        m["mean_output_rel_err"] = sum(errs) / len(errs)
    return m


def check_expectations(recipe: Recipe, report: dict[str, Any]) -> list[dict[str, Any]]:
    m = metrics_of(report)
    out = []
    for name, exp in recipe.expect.items():
        got = m.get(name)
        ok = got is not None and abs(got - exp.value) <= exp.tol
        out.append({"metric": name, "value": exp.value, "tol": exp.tol, "got": got, "ok": ok})
    return out
