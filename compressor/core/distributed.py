"""Data-parallel compression on torch.distributed: one process per device, windows sharded.

What the ranks exchange, and when:

1. At start, a hash of the resolved recipe (and later the run fingerprint: model, calibration
   windows, recipe, version). Ranks that disagree stop with one line before any work.
2. Every calibration statistic, summed over ranks before any rank compresses: per decoder layer
   the Gram Σxxᵀ, Σ|x| and the token count of each input stream (reduced in float64, stored back
   in float32); once, before the layers, the Fisher / |grad| sums of the gradient pass.
3. Per decoder layer, the compressed modules: the layer's target linears are dealt to ranks
   largest first (each to the least-loaded rank), each rank compresses its share, then every
   rank broadcasts its modules (spec + report rows as a small object, the state dict as one flat
   byte buffer). Every rank then holds the whole compressed layer and propagates its own window
   shard through it.

Rank 0 alone writes resume checkpoints, the output and the report, and evaluates. Backends:
NCCL when the compute device is CUDA, gloo on CPUs. Every collective runs under the process
group's timeout (``SVDC_DIST_TIMEOUT`` seconds, default 1800), so no rank waits forever; a lost
peer or a timeout becomes a :class:`DistributedError` (one line, exit code 75).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from compressor.core.layer_io import set_submodule
from compressor.core.module_exchange import _numel, _pack, _unpack  # noqa: F401
from compressor.errors import UserError

log = logging.getLogger("svdc")

TIMEOUT_ENV = "SVDC_DIST_TIMEOUT"
LAUNCHED_ENV = "SVDC_LAUNCHED"          # set by `--nproc`: the launcher reports lost ranks
FAULT_ENV = "SVDC_FAULT_KILL"           # tests: "RANK:LAYER" makes that rank SIGKILL itself
DEFAULT_TIMEOUT_S = 1800.0
PEER_LOST_EXIT = 75


class DistributedError(UserError):
    """A peer rank died, stalled past the timeout, or disagrees with this one."""

    exit_code = PEER_LOST_EXIT


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV} must be positive, got {raw}")
    return value


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def env_rank() -> int:
    """This process's rank as torchrun (or --nproc) set it; 0 when run alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UserError(f"RANK={os.environ['RANK']!r} is not an integer") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Distributed:
    """This process's place in the run; ``world == 1`` is the ordinary single-process run and
    every method here is then a no-op."""

    rank: int = 0
    world: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    # ---------------------------------------------------------------- setup / teardown
    @classmethod
    def start(cls, device: torch.device, recipe_key: str) -> "Distributed":
        """Join (or create) the process group described by torchrun's environment variables;
        check every rank runs the same recipe. ``device`` is the resolved compute device: a
        CUDA device becomes ``cuda:LOCAL_RANK``."""
        already = dist.is_available() and dist.is_initialized()
        if not already and env_world_size() <= 1:
            return cls(device=device)
        if not dist.is_available():
            raise UserError("this torch build has no torch.distributed; run with one process")
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA "
                                f"devices: launch at most that many ranks per host")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        owns = False
        if not already:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ and \
                    os.environ.get("MASTER_ADDR", "") in ("127.0.0.1", "localhost"):
                os.environ["GLOO_SOCKET_IFNAME"] = "lo"
            try:
                dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
            except (RuntimeError, ValueError) as e:
                raise DistributedError(f"cannot join the process group ({_first_line(e)}): check "
                                       "MASTER_ADDR/MASTER_PORT and that every rank was started") from e
            owns = True
        self = cls(rank=dist.get_rank(), world=dist.get_world_size(), backend=dist.get_backend(),
                   device=device, owns_group=owns)
        if self.world > 1 and self.rank != 0:
            _quiet()
        if self.world > 1:
            log.info("distributed: rank %d of %d, backend %s, device %s",
                     self.rank, self.world, self.backend, device)
        self.agree("recipe", _digest(recipe_key),
                   "launch every rank with the same command, recipe and svdc version")
        return self

    def close(self) -> None:
        """Leave the process group (if this object created it); later work needs no peers."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def info(self) -> dict[str, Any] | None:
        if not self.active:
            return None
        return {"world_size": self.world, "backend": self.backend,
                "timeout_s": timeout_seconds()}

    # ---------------------------------------------------------------- error handling
    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistributedError:
            raise
        except (RuntimeError, ValueError, ConnectionError) as e:
            if os.environ.get(LAUNCHED_ENV):
                _quiet()   # the launcher knows which rank died and says it in one line
            raise DistributedError(
                f"rank {self.rank} lost contact with the other ranks during {what} "
                f"({_first_line(e)}): a rank died or stalled past the {timeout_seconds():.0f} s "
                f"timeout ({TIMEOUT_ENV}); finished layers are checkpointed, rerun the same "
                f"command with --resume") from e

    def _gather(self, obj: Any, what: str) -> list[Any]:
        out: list[Any] = [None] * self.world
        with self._collective(what):
            dist.all_gather_object(out, obj)
        return out

    def agree(self, what: str, value: str, fix: str) -> None:
        """Every rank must hold the same ``value`` (a hash); else one line on every rank."""
        if not self.active:
            return
        values = self._gather(value, f"the {what} check")
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise DistributedError(f"ranks disagree on the {what}: rank {bad[0]} has "
                                   f"{str(values[bad[0]])[:12]}, rank 0 has {str(values[0])[:12]}; {fix}")

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a block that may fail on some ranks only: afterwards every rank learns whether
        any rank failed, and all raise the first failure's message instead of hanging in the
        next collective."""
        if not self.active:
            yield
            return
        mine: str | None = None
        try:
            yield
        except DistributedError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised below on every rank
            mine = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
            errors = self._gather(mine, what)
            if isinstance(e, UserError):
                raise
            raise UserError(f"rank {self.rank} failed during {what}: {mine}") from e
        errors = self._gather(mine, what)
        for r, msg in enumerate(errors):
            if msg is not None:
                raise UserError(f"rank {r} failed during {what}: {msg}")

    # ---------------------------------------------------------------- data
    def shard(self, windows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of the calibration windows (sizes differ by at most 1)."""
        if not self.active:
            return windows
        if windows.shape[0] < self.world:
            raise UserError(f"{windows.shape[0]} calibration windows cannot be shared by "
                            f"{self.world} ranks: raise --nsamples to at least {self.world}")
        return torch.tensor_split(windows, self.world)[self.rank].contiguous()

    def _all_reduce_sum(self, t: torch.Tensor, what: str) -> None:
        """In place: ``t`` becomes the sum over ranks, reduced in float64."""
        buf = t.detach().to(device=self.comm_device, dtype=torch.float64)
        with self._collective(what):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf.to(device=t.device, dtype=t.dtype))

    def reduce_accumulators(self, accumulators: list[Any], what: str) -> None:
        """Sum the Gram, Σ|x| and token count of each input accumulator over ranks (in place).

        ``accumulators`` must be the same streams in the same order on every rank."""
        if not self.active:
            return
        shapes = [(tuple(a.gram.shape) if a.gram is not None else None,
                   tuple(a.abssum.shape) if a.abssum is not None else None) for a in accumulators]
        self.agree(f"statistics of {what}", _digest(json.dumps(shapes)),
                   "the ranks saw different layer structures (a bug: report it)")
        counts = torch.tensor([a.ntokens for a in accumulators], dtype=torch.float64)
        self._all_reduce_sum(counts, f"the statistics of {what}")
        for a, n in zip(accumulators, counts.tolist()):
            a.ntokens = int(n)
            if a.gram is not None:
                self._all_reduce_sum(a.gram, f"the Gram reduction of {what}")
            if a.abssum is not None:
                self._all_reduce_sum(a.abssum, f"the |x| reduction of {what}")

    def reduce_gradient_stats(self, stats: dict[str, dict[str, torch.Tensor]], n_local: int,
                              n_total: int) -> dict[str, dict[str, torch.Tensor]]:
        """Sum Fisher (and its row/column sums) over ranks; ``grad_absmean`` is a mean over this
        rank's ``n_local`` samples, so it is turned back into a sum, reduced, and divided by
        ``n_total``. Tied weights share one dict: each is reduced once."""
        if not self.active:
            return stats
        seen: set[int] = set()
        for name in sorted(stats):
            d = stats[name]
            if id(d) in seen:
                continue
            seen.add(id(d))
            for key in sorted(d):
                t = d[key]
                if key == "grad_absmean":
                    t.mul_(n_local)
                self._all_reduce_sum(t, f"the gradient statistics ({name}.{key})")
                if key == "grad_absmean":
                    t.div_(n_total)
        return stats

    def total(self, n: int, what: str) -> int:
        if not self.active:
            return n
        t = torch.tensor([float(n)], dtype=torch.float64)
        self._all_reduce_sum(t, what)
        return int(t.item())

    # ---------------------------------------------------------------- compression share
    def assign(self, targets: dict[str, nn.Module]) -> dict[str, int]:
        """Owner rank of each target: largest first, each to the least-loaded rank (ties: the
        lowest rank), weighted by parameter count. Deterministic, the same on every rank."""
        sizes = {rel: _numel(m) for rel, m in targets.items()}
        order = sorted(targets, key=lambda rel: -sizes[rel])   # stable: execution order on ties
        load = [0] * max(self.world, 1)
        owner: dict[str, int] = {}
        for rel in order:
            r = min(range(len(load)), key=lambda k: (load[k], k))
            owner[rel] = r
            load[r] += sizes[rel]
        return owner

    def share_modules(self, layer: nn.Module, owner: dict[str, int], mine: dict[str, Any],
                      device: torch.device, what: str) -> dict[str, Any]:
        """Broadcast each rank's compressed modules of ``layer``; install the others' modules
        in ``layer`` (on ``device``). ``mine``: rel -> report row (a ModuleRecord) of the modules
        this rank compressed (already installed). Returns rel -> row for every target."""
        from compressor.core.types import ModuleRecord
        if not self.active:
            return dict(mine)
        rows: dict[str, Any] = dict(mine)
        for src in range(self.world):
            rels = [rel for rel, r in owner.items() if r == src]
            if not rels:
                continue
            if src == self.rank:
                meta, buf = _pack(layer, rels, {rel: mine[rel].to_dict() for rel in rels},
                                  self.comm_device)
            else:
                meta, buf = None, None
            box = [meta]
            with self._collective(f"the exchange of {what}"):
                dist.broadcast_object_list(box, src=src, device=self.comm_device)
            meta = box[0]
            if src != self.rank:
                buf = torch.empty(meta["nbytes"], dtype=torch.uint8, device=self.comm_device)
            with self._collective(f"the exchange of {what}"):
                dist.broadcast(buf, src=src)
            if src == self.rank:
                continue
            for rel, module in _unpack(meta, buf):
                set_submodule(layer, rel, module.to(device))
                row = dict(meta["rows"][rel])
                row["shape"] = tuple(row["shape"])
                rows[rel] = ModuleRecord(**row)
        return rows

    def share_resumed(self, layer: nn.Module, rels: list[str], rows: list[Any] | None,
                      device: torch.device, what: str) -> list[Any] | None:
        """Rank 0 read (or did not find) a resume checkpoint of ``layer``: tell every rank, and
        send the checkpointed modules to the others."""
        if not self.active:
            return rows
        box = [None if rows is None else [r.to_dict() for r in rows]]
        with self._collective(f"the resume check of {what}"):
            dist.broadcast_object_list(box, src=0, device=self.comm_device)
        if box[0] is None:
            return None
        from compressor.core.types import ModuleRecord
        records = []
        for r in box[0]:
            r = dict(r)
            r["shape"] = tuple(r["shape"])
            records.append(ModuleRecord(**r))
        by_rel = {rel: rec for rel, rec in zip(rels, records)}
        self.share_modules(layer, {rel: 0 for rel in rels},
                           by_rel if self.rank == 0 else {}, device, what)
        return records

    def fault_point(self, layer_index: int) -> None:
        """Test hook: ``SVDC_FAULT_KILL=RANK:LAYER`` kills that rank (SIGKILL, no cleanup) when it
        reaches that layer, as a crashed node would (rank 0 alone in a 1-process run)."""
        spec = os.environ.get(FAULT_ENV)
        if not spec:
            return
        rank, layer = (int(x) for x in spec.split(":"))
        if rank == self.rank and layer == layer_index:
            os.kill(os.getpid(), signal.SIGKILL)


def _quiet() -> None:
    """Silence this process's console (ranks other than 0 print nothing; rank 0 prints its own
    errors only when no launcher speaks for it)."""
    try:
        from compressor.console import console
        console.quiet = True
    except Exception:  # noqa: BLE001 - printing is optional
        pass


def _first_line(e: BaseException) -> str:
    """The first line of a backend error, without gloo's ``[/path/pair.cc:537]`` source tags
    (which rich would also take for markup)."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    line = re.sub(r"\[/[^\]]*\]\s*", "", line).strip() or type(e).__name__
    return line[:200]


def run_on_main(d: Distributed, fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` on rank 0 only (None elsewhere); a failure there stops every rank."""
    with d.guard(what):
        return fn() if d.is_main else None
