"""``sxbench run`` across processes: ``torchrun --nproc_per_node N -m sxbench run …`` or ``accelerate launch -m
sxbench run …`` (both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address).

Rank ``i`` of ``N`` generates every N-th pending sample of each method, from the i-th, on its own device
(``--device cuda`` becomes ``cuda:<LOCAL_RANK>``) into ``RUN/shards/rank<i>-of-<N>``, scoring them with the
per-image metrics as it goes: generation and per-image scoring are both spread. Samples already in ``RUN`` count as
done, read through a read-only connection. When every rank is done, rank 0 merges the shards into ``RUN``
(``sxbench.merge``: deduplicated, hard links), computes the set metrics and expert statistics, writes the report
and removes the merged shards. Why merged stores rather than one shared store: see ``sxbench.merge``.

A rank that dies (kill -9, out of memory) leaves its committed samples in its shard and nothing half-written;
torchrun then stops the others. The same command resumes: every rank skips what its shard or ``RUN`` holds, and
rank 0 merges whatever shards it finds, of any earlier world size too.

The processes talk only through ``gloo`` barriers (no tensors), so the same code runs on CPUs and GPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path

import torch

from sxbench.runner import RunConfig, RunSummary, Runner

log = logging.getLogger(__name__)

BARRIER_HOURS_ENV = "SXBENCH_BARRIER_HOURS"
"""How long a rank that finished waits for the slowest one (default 72 hours: ranks of a long GPU run finish at
very different times, and gloo's default is 30 minutes)."""


def world() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` when launched by torchrun or accelerate with more than one process."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    return int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def shard_dir(run_dir: Path, rank: int, size: int) -> Path:
    return run_dir / "shards" / f"rank{rank}-of-{size}"


def _agree(flag: bool) -> bool:
    """A barrier that also tells every rank whether all of them passed ``True``."""
    import torch.distributed as dist

    t = torch.tensor([0 if flag else 1], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item()) == 0


def _sum(values: list[int]) -> list[int]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def _gather(failed: dict[str, str]) -> dict[str, str]:
    """Every rank's methods that could not be created (each rank creates every method)."""
    import torch.distributed as dist

    out: list[dict[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(out, failed)
    return {k: v for d in out for k, v in (d or {}).items()}


def _latest_record(folder: Path) -> dict:
    from sxbench.merge import describe

    return describe(folder)["record"]


def _mergeable(main: Path, size: int) -> list[Path]:
    """The shard folders under ``RUN/shards`` that hold a store with a run, this run's ``size`` all among them (one
    line otherwise: across nodes, RUN must be on a filesystem every node shares). Leftovers of an earlier run that
    never got a store are skipped; their samples are made again."""
    from sxbench.store import DB_NAME

    for left in (main / "shards").glob(".merged-*"):  # merged, then killed while being deleted
        shutil.rmtree(left, ignore_errors=True)
    folders = sorted(p for p in (main / "shards").iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [shard_dir(main, r, size).name for r in range(size) if not (shard_dir(main, r, size) / DB_NAME).is_file()]
    if missing:
        raise RuntimeError(f"rank 0 cannot see {', '.join(missing)} under {main / 'shards'}: every rank must write RUN "
                           "on a filesystem rank 0 shares; without one, run separate jobs with --shard I/N and "
                           "bring them together with `sxbench merge`")
    usable = []
    for p in folders:
        if (p / DB_NAME).is_file():
            try:
                _latest_record(p)
                usable.append(p)
                continue
            except ValueError:
                pass
        log.warning("%s holds no finished records (a run killed as it started); skipped", p)
    return usable


def run(config: RunConfig) -> RunSummary | None:
    """Run ``config`` as this process's rank (see the module docstring). Returns the merged run's summary on rank
    0 (generated/skipped/failed summed over the ranks) and ``None`` on the others."""
    import torch.distributed as dist

    from sxbench.lock import run_lock
    from sxbench.merge import merge

    rank, size, local = world() or (0, 1, 0)
    hours = float(os.environ.get(BARRIER_HOURS_ENV, "72"))
    dist.init_process_group("gloo", timeout=timedelta(hours=hours))
    try:
        device = config.device
        if device == "cuda":
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        main = config.run_dir
        lock = run_lock(main) if rank == 0 else None
        error: BaseException | None = None
        if lock is not None:
            try:
                lock.__enter__()  # no other sxbench writes RUN while the ranks read it and rank 0 merges into it
            except BaseException as exc:  # RunFolderBusy: every rank stops with it
                error, lock = exc, None
        if not _agree(error is None):
            if error is not None:
                raise error
            raise RuntimeError(f"rank 0 could not take {main}: see its message")
        try:
            mine = dataclasses.replace(config, out=shard_dir(main, rank, size), shard=(rank, size), done_in=main,
                                       finish=False, device=device, progress=config.progress and rank == 0)
            summary, failure = None, None
            try:
                summary = Runner(mine).run()
            except Exception as exc:  # every rank still makes the same collective calls, then all stop
                failure = exc
            counts = _sum([0 if failure else 1] + ([summary.generated, summary.skipped, summary.failed,
                                                     summary.rescored] if summary else [0, 0, 0, 0]))
            failed_methods = _gather(summary.failed_methods if summary else {})
            if counts[0] != size:
                if failure is not None:
                    raise failure
                raise RuntimeError(f"{size - counts[0]} of {size} ranks failed (their messages say why); run the "
                                   "same command again to resume")
            if rank != 0:
                return None
            shards = _mergeable(main, size)
            log.info("merging %d shard folders into %s", len(shards), main)
            record = _latest_record(shard_dir(main, 0, size))
            merged = merge(shards, main, locked=True, progress=config.progress, device=device,
                           weights_dir=config.weights_dir, record=record)
            for s in shards:  # merged: the records and files are in RUN now (hard links)
                trash = s.with_name(f".merged-{s.name}")
                os.replace(s, trash)  # one rename: a shard is either whole or gone, never half deleted
                shutil.rmtree(trash)
            if not any((main / "shards").iterdir()):
                (main / "shards").rmdir()
            return dataclasses.replace(summary, run_dir=main, generated=counts[1], skipped=counts[2],
                                       failed=counts[3], rescored=counts[4] + merged.rescored,
                                       failed_methods=failed_methods)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
    finally:
        try:
            _agree(True)  # rank 0 has merged (or failed): the others may leave
        finally:
            dist.destroy_process_group()
