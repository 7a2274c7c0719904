"""One definition of each measured quantity: output error, bits per weight, parameters kept.

Every report field, method info and benchmark reads these, so a number means the same
thing wherever it appears.

* Output error of a weight error ΔW on calibration inputs with Gram G = Σ x xᵀ:
  tr(ΔW G ΔWᵀ), the summed squared output error (float32 product, float64 sum). Relative: divided by
  tr(W G Wᵀ), then square-rooted.
* Bits per weight of a compressed linear: 8 × the bytes of what replaces the weight (its
  parts; a bias is not a weight) / the weight's element count.
* Parameters kept: stored elements of the parts / the weight's element count.
"""

from __future__ import annotations

import torch

from compressor.parts.base import CompressedLinear


_BLOCK = 1 << 24   # float32 elements of output_error's product per block (64 MB)


def output_error(delta: torch.Tensor, gram: torch.Tensor,
                 row_weight: torch.Tensor | None = None) -> float:
    """tr(ΔW G ΔWᵀ): the summed squared output error over the calibration tokens. The
    products run in float32 (the Gram's own precision; float64 doubled the report's cost),
    over blocks of ΔW's rows so the scratch stays bounded (a 7B down_proj's full product is
    180 MB), each block's sum in float64. ``row_weight`` (out,): tr(D ΔW G ΔWᵀ) with
    D = diag(row_weight), e.g. the output channels' Fisher (an estimate of the loss increase
    that compares matrices of different layers in one unit)."""
    g = gram.detach().to(device=delta.device, dtype=torch.float32)
    rows, n = delta.shape
    rb = max(1, min(rows, _BLOCK // max(n, 1)))
    wr = None if row_weight is None else row_weight.detach().to(delta.device, torch.float64)
    total = 0.0
    for r in range(0, rows, rb):
        d = delta[r:r + rb].detach().float()
        per_row = ((d @ g) * d).sum(1, dtype=torch.float64)
        total += float(per_row.sum() if wr is None else (per_row * wr[r:r + rb]).sum())
    return total


def loss_row_weights(fisher_rows: torch.Tensor, gram: torch.Tensor, ntokens: int) -> torch.Tensor:
    """Per output channel r, the mean squared loss gradient E[g_r²] that turns the output
    error Σ_t Δy_{t,r}² into a loss increase (second order, diagonal): the weights D of
    tr(D ΔW G ΔWᵀ). The backward pass gives the Fisher row sums f_r = Σ_c Σ_samples
    (∂L/∂W_rc)² ≈ E[g_r²]·Σ_t ‖x_t‖²: the input energy is in them once and the Gram counts it
    again, so f_r is divided by the mean input energy tr(G)/T. Without that a sum over
    matrices weighs each by its input norm, which grows with depth and differs between q/k/v
    and o/down inputs by orders of magnitude: an allocation across matrices then buys bits
    for high-energy inputs, not for the loss. Within one matrix it is a constant factor.
    Float64, as the decompositions that use it."""
    energy = float(torch.diagonal(gram).sum()) / max(int(ntokens), 1)
    return fisher_rows.to(torch.float64).clamp_min(0) / (energy if energy > 0 else 1.0)


def relative_output_error(delta: torch.Tensor, w: torch.Tensor, gram: torch.Tensor,
                          ref: float | None = None) -> float:
    """sqrt(tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)); 0 when the layer has no output at all. ``ref``:
    tr(W G Wᵀ) when the caller already has it (several errors of one weight)."""
    ref = output_error(w, gram) if ref is None else ref
    return (max(output_error(delta, gram), 0.0) / ref) ** 0.5 if ref > 0 else 0.0


def weight_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F."""
    return float((w - w_hat).norm() / w.norm().clamp_min(1e-30))


def weight_bytes(module: CompressedLinear) -> int:
    """Bytes of the parts that replace the weight (the bias excluded)."""
    return sum(t.numel() * t.element_size() for p in module.parts for t in p.state_dict().values())


def weight_numel(module: CompressedLinear) -> int:
    """Stored elements of the parts that replace the weight (the bias excluded)."""
    return sum(t.numel() for p in module.parts for t in p.state_dict().values())


def bits_per_weight(module: CompressedLinear) -> float:
    return 8.0 * weight_bytes(module) / (module.out_features * module.in_features)


def params_kept(module: CompressedLinear) -> float:
    return weight_numel(module) / (module.out_features * module.in_features)
