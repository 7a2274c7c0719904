"""Calibration statistics of linear-layer inputs, accumulated in fp32 by forward hooks.

Linears that read the same tensor in the same forward (q/k/v, gate/up) share one
accumulator: the Gram matrix of a 7B MLP input is 11008² floats, so computing it once per
input instead of once per consumer matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.core.types import LinearStats


@dataclass
class InputAccumulator:
    """Running Σ x xᵀ and Σ |x| over tokens of one input tensor stream."""

    want_gram: bool
    want_absmean: bool
    ntokens: int = 0
    gram: torch.Tensor | None = None
    abssum: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.ntokens += x.shape[0]
        if self.want_gram:   # accumulate in place: no (in, in) temporary per call
            self.gram = x.T @ x if self.gram is None else self.gram.addmm_(x.T, x)
        if self.want_absmean:
            a = x.abs().sum(0)
            self.abssum = a if self.abssum is None else self.abssum.add_(a)

    def to_stats(self) -> LinearStats:
        absmean = None if self.abssum is None else self.abssum / max(self.ntokens, 1)
        return LinearStats(ntokens=self.ntokens, gram=self.gram, act_absmean=absmean)


@dataclass
class LayerStatsCollector:
    """Hooks on a layer's target linears; shares accumulators between linears fed the same x."""

    modules: dict[str, nn.Module]
    want_gram: bool
    want_absmean: bool
    _acc: dict[str, InputAccumulator] = field(default_factory=dict)
    _handles: list = field(default_factory=list)
    # id(x) -> (x, accumulator); holding x keeps its address from being reused in this call
    _seen_this_call: dict[int, tuple[torch.Tensor, InputAccumulator]] = field(default_factory=dict)
    _owner: dict[str, bool] = field(default_factory=dict)

    def __enter__(self) -> "LayerStatsCollector":
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def new_call(self) -> None:
        """Call before each layer forward: sharing is decided per forward call."""
        self._seen_this_call.clear()

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            if name not in self._acc:
                seen = self._seen_this_call.get(id(x))
                if seen is not None and seen[0] is x:
                    self._acc[name], self._owner[name] = seen[1], False
                else:
                    self._acc[name] = InputAccumulator(self.want_gram, self.want_absmean)
                    self._owner[name] = True
            acc = self._acc[name]
            self._seen_this_call[id(x)] = (x, acc)
            if self._owner[name]:
                acc.add(x)
        return hook

    def accumulators(self) -> list[InputAccumulator]:
        """The distinct input streams, in the order their first consumer ran."""
        return [self._acc[name] for name in self._acc if self._owner[name]]

    def groups(self, names: list[str]) -> list[list[str]]:
        """``names`` grouped by shared input, groups in the order their first linear ran;
        linears never fed in the forward come last, one group each."""
        by_acc: dict[int, list[str]] = {}
        for name in self._acc:   # insertion order = order of first call
            by_acc.setdefault(id(self._acc[name]), []).append(name)
        out = [[n for n in g if n in names] for g in by_acc.values()]
        out = [g for g in out if g]
        seen = {n for g in out for n in g}
        return out + [[n] for n in names if n not in seen]

    def stats(self) -> dict[str, LinearStats]:
        self._seen_this_call.clear()
        return {name: acc.to_stats() for name, acc in self._acc.items()}
