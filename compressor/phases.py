"""The phases of one compress run, in order: set up, load, calibrate, plan, layers, heal,
write. Each reads and fills one RunState, so api.compress reads as the list of phases.

This is the one orchestrator for every mode. ``--stream`` changes one thing only: the layer
source (the whole model resident, or a meta skeleton whose layers are read from the shards and
freed: core/sources.py). The one writer (checkpoint/save.py) takes a layer that is not in
memory from its resume checkpoint, which holds the bytes writing it from memory gives, so both
modes write the same files. Ranks, resume, planning, gradients, heal, evaluation and the
report run the same code in both.
"""

from __future__ import annotations

import json
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
from compressor.core.context import PassContext
from compressor.core.distributed import Distributed, run_on_main
from compressor.core.gradients import GRAD_STATS
from compressor.core.pipeline import CompressJob, compress_pass, numerics_summary
from compressor.core.planning import planning_pass
from compressor.core.plan_cache import load_measures, measures_key, save_measures
from compressor.core.resume import LayerCheckpoints, fingerprint, resume_dir_for
from compressor.core.shards import is_resident
from compressor.core.sources import InMemoryLayers, StreamedLayers
from compressor.core.stages import Stage, stage_needs
from compressor.errors import UserError
from compressor.heal.stage import HealJob, split_post_stages
from compressor.models import resolve_storage_dtype
from compressor.progress import NullProgress, ProgressSink
from compressor.recipe import Recipe, dump_recipe
from compressor.report import write_report
from compressor.run_eval import check_expect_names, check_expectations, evaluate_all
from compressor.run_gradients import run_gradients
from compressor.runtime import StageTimer, machine, peak_memory, versions
from compressor.safety.input_paths import check_fisher_path
from compressor.safety.limits import calibration_seqlen, check_ranks, warn_few_tokens
from compressor.safety.memory import check_activation_memory


@dataclass
class RunState:
    """Everything one run has built so far; each phase fills its part."""

    recipe: Recipe
    output: Path
    progress: ProgressSink
    device: torch.device
    dist: Distributed
    recipe_json: str
    stream: bool = False
    timer: StageTimer = field(default_factory=StageTimer)
    stages: list[Stage] = field(default_factory=list)
    post_stages: list[Any] = field(default_factory=list)   # post stages' configs (heal)
    needs: frozenset[str] = frozenset()
    model: Any = None
    tokenizer: Any = None
    source: Any = None                 # InMemoryLayers | StreamedLayers
    minfo: dict[str, Any] = field(default_factory=dict)
    compute_dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype = torch.float32
    source_dtype: torch.dtype = torch.float32   # the checkpoint's own (for "bytes before")
    layers_path: str = ""
    layers: Any = None
    target_names: list[str] = field(default_factory=list)
    target_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    before_targets: tuple[int, int] = (0, 0)
    before_model: tuple[int, int] = (0, 0)
    seqlen: int = 0
    windows: Any = None                # None: a data-free run (no forward pass at all)
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

    def context(self, resume: LayerCheckpoints | None = None) -> PassContext:
        return PassContext(device=self.device, seed=self.recipe.calibration.seed,
                           storage_dtype=self.storage_dtype, dist=self.dist, resume=resume,
                           progress=self.progress)

    def job(self) -> CompressJob:
        from compressor.models import linear_kind
        return CompressJob(layers_path=self.layers_path, stages=self.stages, needs=self.needs,
                           targets_of=self.targets_of, kind_of=linear_kind,
                           grad_stats=self.grad_stats)

    @property
    def data_free(self) -> bool:
        return self.windows is None


def setup(recipe: Recipe, output: Path, progress: ProgressSink | None,
          stream: bool = False) -> RunState:
    """Device, ranks (a no-op alone) and the stages, before anything loads."""
    from compressor.models import resolve_device
    check_fisher_path(recipe.gradients.fisher_file)
    device = resolve_device(recipe.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recipe_json = json.dumps(recipe.model_dump(mode="json", exclude={"output", "eval", "expect"}),
                             sort_keys=True)
    dist = Distributed.start(device, recipe_json + __version__ + f"stream={stream}")
    run = RunState(recipe=recipe, output=output, device=dist.device, dist=dist, stream=stream,
                   progress=(progress or NullProgress()) if dist.is_main else NullProgress(),
                   recipe_json=recipe_json)
    run.stages, run.post_stages = split_post_stages(list(recipe.stages))   # order: stage_rules
    run.needs = stage_needs(run.stages)
    check_eval_names(run)
    return run


def check_eval_names(run: RunState) -> None:
    """The recipe's lm-eval task names and `expect:` metric names, checked before the model
    loads (else an unknown task is found after the whole compression, a misspelled metric
    at the end as "got None")."""
    r = run.recipe
    rows = None
    if r.eval and r.eval.tasks:
        from compressor.tasks import check_tasks
        rows = check_tasks(list(r.eval.tasks))
    check_expect_names(r, rows, output_errors=needs_calibration(run))


def load(run: RunState, trust_remote_code: bool) -> None:
    """The model (whole, or a skeleton whose layers stream), its target linears and what
    they weigh before compression."""
    from compressor.models import decoder_layers, load_model
    r = run.recipe
    with run.timer("load"):
        if run.stream:
            from compressor.checkpoint.stream_load import open_streamed
            if trust_remote_code:
                raise UserError("--stream builds models from transformers' own classes only; "
                                "drop --trust-remote-code or --stream")
            model, run.tokenizer, run.minfo, reader = open_streamed(r.model, r.dtype, run.device)
        else:
            model, run.tokenizer, minfo = load_model(r.model, dtype=r.dtype, device="cpu",
                                                     compute_device=run.device,
                                                     trust_remote_code=trust_remote_code)
            run.minfo = minfo if isinstance(minfo, dict) else vars(minfo)
    run.model = model
    run.compute_dtype = next(model.parameters()).dtype
    run.storage_dtype = resolve_storage_dtype(r.storage_dtype, run.minfo.get("checkpoint_dtype"),
                                              run.compute_dtype)
    run.layers_path, run.layers = decoder_layers(model)
    run.source = (StreamedLayers(model, run.layers_path, reader) if run.stream
                  else InMemoryLayers(model, run.layers_path))
    run.target_names = [f"{run.layers_path}.{i}.{rel}" for i, layer in enumerate(run.layers)
                        for rel in run.targets_of(layer)]
    if not run.target_names:
        raise UserError(f"no linear layers matched the target patterns "
                        f"include={r.targets.include} exclude={r.targets.exclude}")
    run.source_dtype = resolve_storage_dtype("auto", run.minfo.get("checkpoint_dtype"),
                                             run.compute_dtype)   # what the checkpoint holds
    run.before_model = model_footprint(model, run.source_dtype)
    run.target_shapes = {n: tuple(model.get_submodule(n).weight.shape) for n in run.target_names}
    numel = sum(a * b for a, b in run.target_shapes.values())
    run.before_targets = (numel, numel * run.source_dtype.itemsize)
    check_ranks(r.stages, run.target_shapes)


def needs_calibration(run: RunState) -> bool:
    """Whether any part of the run reads the model's response to text: a statistic, a plan
    that needs data, heal, a dense evaluation, or output errors asked for."""
    r = run.recipe
    if r.output_errors:
        return True
    return bool(run.needs or run.post_stages or (r.eval and r.eval.dense)
                or any(s.method.plan_needs_for(s.cfg) or s.method.true_sequential(s.cfg)
                       for s in run.stages))


def calibrate(run: RunState) -> None:
    """Calibration windows, task checks, the dense evaluation and the gradient statistics;
    none of it in a data-free run (RTN, SVD, magnitude pruning: read, compress, write)."""
    from compressor.data import calibration_windows
    r, cal = run.recipe, run.recipe.calibration
    run.seqlen = calibration_seqlen(cal, run.model.config)
    if not needs_calibration(run):
        return
    check_activation_memory(cal.nsamples, run.seqlen, run.minfo.get("hidden_size"),
                            run.compute_dtype.itemsize)
    with run.timer("data"):
        run.windows = calibration_windows(run.tokenizer, cal.dataset, cal.nsamples, run.seqlen,
                                          cal.seed)
    if run.dist.is_main:                            # one warning, not one per rank
        warn_few_tokens(r.stages, int(run.windows.numel()),
                        max(shape[1] for shape in run.target_shapes.values()))
    if r.eval and r.eval.dense:
        with run.timer("eval_dense"):   # the uncompressed model on the same windows and tasks
            run.dense_eval = _evaluate(run, run.minfo["path"], "dense ")
    want = set(run.needs & GRAD_STATS)
    if want:
        with run.timer("gradients"):
            run.grad_stats, run.grad_info = run_gradients(run, want)


def plan(run: RunState) -> None:
    """Each stage's global plan (rank / bit allocation); stages whose plan needs calibration
    statistics (LQ-LoRA's output-error ILP, WeLore on whitened spectra) get one pass first."""
    with run.timer("plan"):
        weights = run.source.weights(run.target_names, run.device)
        fisher = ({n: g["fisher"] for n, g in run.grad_stats.items() if "fisher" in g}
                  if run.grad_stats else None)
        measures: dict[int, Any] = {}
        if not run.data_free:
            stored = _stored_measures(run)
            measures, plan_pass_s = planning_pass(run.model, run.layers,
                                                  run.dist.shard(run.windows), run.job(),
                                                  run.context(), run.source,
                                                  skip=frozenset(k for k, _, m in stored if m))
            if measures:
                run.timer.seconds["plan.data_pass"] = plan_pass_s
            for k, key, m in stored:
                if m is not None:
                    measures[k] = m
                elif run.dist.is_main:
                    save_measures(run.stages[k].cfg.measures_file, key, measures[k])
        for k, st in enumerate(run.stages):
            st.plan = st.method.run_plan(weights, st.cfg, fisher, dtype=run.storage_dtype,
                                         measures=measures.get(k)) or {}


def _stored_measures(run: RunState) -> list[tuple[int, str, dict[str, Any] | None]]:
    """(stage index, key, measures or None) for each stage with a ``measures_file``: read
    when the file was made for this model, calibration and menu (core/plan_cache.py)."""
    out = []
    for k, st in enumerate(run.stages):
        path = getattr(st.cfg, "measures_file", None)
        if path and st.method.plan_needs_for(st.cfg):
            key = measures_key(run.minfo, run.windows, st.method.pricing(st.cfg),
                               run.storage_dtype, run.recipe.calibration.seed)
            out.append((k, key, load_measures(path, key)))
    return out


def layers(run: RunState, resume: bool) -> bool:
    """The sequential pass (per-layer checkpoints, ranks); False on a rank other than 0,
    which stops there: rank 0 writes and evaluates alone."""
    dist, cal = run.dist, run.recipe.calibration
    run_fp = fingerprint(run.minfo, run.windows if run.windows is not None else torch.empty(0),
                         run.recipe_json, __version__)
    dist.agree("run fingerprint (model, calibration windows, recipe)", run_fp,
               "every rank must load the same model files and calibration data")
    run.ckpt = run_on_main(dist, lambda: LayerCheckpoints(resume_dir_for(run.output), run_fp,
                                                          resume, run.storage_dtype),
                           "the resume check")
    if run.post_stages and dist.is_main:   # heal's windows and teacher, before compression
        with run.timer("heal_prepare"):
            run.heal_job = HealJob.prepare(run.post_stages[0], run.model, run.tokenizer,
                                           run.windows, cal.dataset, run.context(run.ckpt),
                                           resume, dense_forward=_dense_forward(run))
    with run.timer("layers"):
        windows = None if run.data_free else dist.shard(run.windows)
        ctx = run.context(resume=run.ckpt)
        run.result = compress_pass(run.model, run.layers, windows, run.job(), ctx, run.source)
        dist.close()
        if not dist.is_main:
            return False
        round_uncompressed(run.model, run.storage_dtype)   # evaluate what the file holds
    bytes_before_in(run.result.records, run.source_dtype)
    run.timer.seconds.update({f"layers.{k}": v for k, v in run.result.stage_seconds.items()})
    return True


def heal(run: RunState, resume: bool) -> None:
    """The heal post stage: perplexity before (when the recipe evaluates), then training. A
    streamed run first reads the compressed layers back (a fraction of the dense size)."""
    if run.heal_job is None:
        return
    if run.stream:
        with run.timer("heal_load"):
            _resident_compressed(run)
    r, eval_before = run.recipe, None
    if r.eval and run.heal_job.cfg.steps > 0:
        with run.timer("eval_before_heal"):
            eval_before = evaluate_all(run.model, run.tokenizer, r, run.seqlen, run.device,
                                       run.progress)["perplexity"]
    with run.timer("heal"):
        run.heal_report = run.heal_job.run(run.model, run.context(run.ckpt), resume)
    run.heal_report["eval_before"] = eval_before


def report_header(run: RunState, command: str) -> dict[str, Any]:
    """What was run, on what, and what happened per module (before the write and the eval)."""
    r, cal, w = run.recipe, run.recipe.calibration, run.windows
    calibration = ({"dataset": None, "nsamples": 0, "seqlen": 0, "seed": cal.seed,
                    "ran": False, "why": "no stage reads statistics (data-free); "
                                         "--output-errors measures them anyway"}
                   if w is None else
                   {"dataset": cal.dataset, "nsamples": int(w.shape[0]),
                    "seqlen": int(w.shape[1]), "seed": cal.seed, "ran": True})
    return {
        "svdc_version": __version__, "command": command, "recipe": r.model_dump(mode="json"),
        "model": {k: (str(v) if isinstance(v, Path) else v) for k, v in run.minfo.items()},
        "streamed": run.stream,
        "device": str(run.device), "dtype": str(run.compute_dtype).removeprefix("torch."),
        "storage_dtype": str(run.storage_dtype).removeprefix("torch."),
        "calibration": calibration,
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
            extra = {"recipe_fingerprint": run.ckpt.fp}
            save_compressed(run.model, run.tokenizer, tmp, run.storage_dtype, extra, run.ckpt)
            (tmp / "recipe.yaml").write_text(dump_recipe(r))
            report["totals"] = totals(written_entries(tmp), run.target_names, run.before_targets,
                                      run.before_model)
            report["totals"]["targets"]["bits_split"] = bits_split(tmp, run.target_names,
                                                                   run.before_targets[0])
        if r.eval:
            with run.timer("eval"):
                ev = _evaluate(run, tmp, verify=False)   # written just now
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


def _evaluate(run: RunState, folder: Path | str, label: str = "",
              verify: bool = True) -> dict[str, Any]:
    """``evaluate_all`` on the run's model when it is resident (always in memory; a streamed
    run after heal), else on ``folder`` read back layer-major as ``svdc eval --stream`` does
    (a streamed run: the source checkpoint before the pass, the written output after)."""
    model = run.model
    if not is_resident(model):
        from compressor.checkpoint.stream_load import load_streamed
        model = load_streamed(folder, device=run.device, dtype=run.compute_dtype, verify=verify)
    return evaluate_all(model, run.tokenizer, run.recipe, run.seqlen, run.device, run.progress,
                        label)


def _dense_forward(run: RunState):
    """How heal's teacher runs the uncompressed model: resident on the device, or (streamed)
    the windows walked through every layer first and the final hidden states replayed."""
    if not run.stream:
        return None
    from compressor.core.streamed_forward import replayed_forward
    return lambda windows: replayed_forward(run.model, run.layers_path, run.layers, windows,
                                            run.context(), run.source)


def _resident_compressed(run: RunState) -> None:
    """A streamed run's compressed layers read back from its checkpoints (each holds its layer
    as written, norms included): the model is then resident, a fraction of its dense size."""
    from compressor.core.shards import ShardReader, load_module
    files = [run.ckpt.layer_file(i).name for i in range(len(run.layers))]
    reader = ShardReader.of_files(run.ckpt.folder, files)
    for i, layer in enumerate(run.layers):
        load_module(run.model, reader, f"{run.layers_path}.{i}.", layer, "cpu")
