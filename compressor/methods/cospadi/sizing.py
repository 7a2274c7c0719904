"""CoSpaDi's budget: the largest dictionary (k atoms, s non-zeros a row) that fits the ratio."""

from __future__ import annotations

import math

from compressor.parts.dictionary import support_bytes_per_row, support_encoding


def dictionary_cost(out_features: int, in_features: int, k: int, s: int,
                    value_bytes: int) -> float:
    """Stored parameter-equivalents of a (k atoms, s non-zeros per row) dictionary part,
    its support in the smaller encoding (a bit mask or indices)."""
    support = support_bytes_per_row(k, s, support_encoding(k, s))
    return in_features * k + out_features * (s + support / value_bytes)


def dictionary_size(out_features: int, in_features: int, ratio: float, s: int | None,
                    value_bytes: int, name: str = "matrix") -> tuple[int, int]:
    """The largest k (and its s) whose cost fits (1 − ratio)·out·in; ValueError if none."""
    budget = (1.0 - ratio) * out_features * in_features + 1e-9

    def s_of(k: int) -> int:
        return s if s is not None else max(1, k // 2)

    lo, hi = 0, math.floor(budget / in_features) + 1      # cost(hi) > budget
    while hi - lo > 1:                                     # cost is increasing in k
        mid = (lo + hi) // 2
        if dictionary_cost(out_features, in_features, mid, s_of(mid), value_bytes) <= budget:
            lo = mid
        else:
            hi = mid
    k = lo
    what = f"{name} ({out_features}x{in_features})"
    if k < 1 or k < s_of(k):
        need = s_of(max(k, 1))
        raise ValueError(f"cospadi: ratio {ratio} leaves no dictionary with k >= s={need} "
                        f"atoms for {what}: lower the ratio or atoms_per_column.")
    if s_of(k) > in_features:
        raise ValueError(f"cospadi: atoms_per_column {s_of(k)} exceeds the {in_features} "
                        f"input features of {what}: use at most {in_features}.")
    return k, s_of(k)
