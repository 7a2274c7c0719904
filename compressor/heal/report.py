"""The report's heal section: perplexity before/after, what was trained, and the loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOSS_PLOT = "heal_loss.png"


def markdown(report: dict[str, Any]) -> list[str]:
    h = report.get("heal")
    if not h:
        return []
    cfg, data = h["config"], h.get("data", {})
    lines = ["", "## Heal", "",
             f"{h['steps']} steps of AdamW (lr {cfg['lr']:g}, warmup {cfg['warmup']}, cosine), "
             f"loss `{cfg['loss']}`, batch 1 × {data.get('seqlen')} tokens, on "
             f"{data.get('nsamples')} {data.get('windows')} windows of the calibration split"
             + (f" ({data['reason']})" if data.get("reason") else "") + "; "
             f"trained {h['trained_parts']} low-rank parts ({h['trainable_params']:,} values, "
             f"fp32 while training, stored back in their dtype) in {h['seconds']:.1f} s"
             + (f", resumed at step {h['resumed_from_step']}" if h.get("resumed_from_step") else "")
             + "."]
    if data.get("teacher"):
        t = data["teacher"]
        lines.append(f"Teacher: {t['cache']}, {t['bytes'] / 2**20:.1f} MiB, {t['seconds']:.1f} s.")
    if h.get("skipped_qlowrank"):
        lines.append(f"{h['skipped_qlowrank']} quantized low-rank (qlowrank) parts were left "
                     f"frozen: their factors are integer codes; training them needs QAT.")
    if h.get("skipped_steps"):
        lines.append(f"{h['skipped_steps']} steps skipped for a non-finite loss or gradient.")
    losses = h.get("losses") or []
    if losses:
        k = max(1, min(10, len(losses) // 2))
        lines.append(f"Training loss: first {k} steps {sum(losses[:k]) / k:.4f}, "
                     f"last {k} steps {sum(losses[-k:]) / k:.4f}.")
    before = {e["dataset"]: e for e in (h.get("eval_before") or [])}
    after = {e["dataset"]: e for e in (report.get("eval") or [])}
    if before and after:
        lines += ["", "| dataset | windows | ppl before heal | ppl after heal |", "|---|---:|---:|---:|"]
        for ds, b in before.items():
            a = after.get(ds)
            after_ppl = "" if a is None else f"{a['ppl']:.3f}"
            lines.append(f"| {ds} | {b['n_windows']} | {b['ppl']:.3f} | {after_ppl} |")
    lines += ["", "Per-module errors in the table below are measured before heal."]
    return lines


def plots(report: dict[str, Any], folder: Path) -> list[str]:
    """The training loss per step (and its running mean) as heal_loss.png."""
    h = report.get("heal") or {}
    losses = h.get("losses") or []
    if not losses:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, len(losses) // 20)
    mean = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
            for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(8, 4))
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, alpha=0.35, label="per step")
    ax.plot(steps, mean, label=f"running mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{h['config']['loss']} loss (training windows)")
    ax.set_title("Heal loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / LOSS_PLOT, dpi=110)
    plt.close(fig)
    return [LOSS_PLOT]
