"""One definition of each measured quantity: output error, bits per weight, parameters kept.

Every report field, method info and benchmark reads these, so a number means the same
thing wherever it appears.

* Output error of a weight error ΔW on calibration inputs with Gram G = Σ x xᵀ:
  tr(ΔW G ΔWᵀ), the summed squared output error, computed in float64. Relative: divided by
  tr(W G Wᵀ), then square-rooted.
* Bits per weight of a compressed linear: 8 × the bytes of what replaces the weight (its
  parts; a bias is not a weight) / the weight's element count.
* Parameters kept: stored elements of the parts / the weight's element count.
"""

from __future__ import annotations

import torch

from compressor.parts.base import CompressedLinear


_BLOCK = 1 << 21   # float64 elements per block (16 MB): bounds the scratch of output_error


def output_error(delta: torch.Tensor, gram: torch.Tensor) -> float:
    """tr(ΔW G ΔWᵀ) in float64: the summed squared output error over the calibration tokens.

    Summed over blocks of ΔW's rows × G's columns, each block cast to float64 on its own
    (about 3 × 16 MB of scratch): float64 copies of a whole 7B down_proj and its Gram would
    be 1.3 GB per module."""
    d, g = delta.detach(), gram.detach().to(delta.device)
    rows, n = d.shape
    rb = max(1, min(rows, _BLOCK // n))
    cb = max(1, min(n, _BLOCK // n, _BLOCK // rb))
    total = torch.zeros((), dtype=torch.float64, device=d.device)
    for r in range(0, rows, rb):
        dr = d[r:r + rb].to(torch.float64)
        for c in range(0, n, cb):
            total += (dr @ g[:, c:c + cb].to(torch.float64)).mul_(dr[:, c:c + cb]).sum()
    return float(total)


def relative_output_error(delta: torch.Tensor, w: torch.Tensor, gram: torch.Tensor) -> float:
    """sqrt(tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)); 0 when the layer has no output at all."""
    ref = output_error(w, gram)
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
