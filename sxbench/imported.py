"""Methods run outside sxbench, scored under the same protocol as native ones.

Two steps:

1. ``write_tasks`` (``sxbench tasks``): the protocol's work list, one CSV row per (pair, seed), with the
   content and style images written beside it exactly as native methods receive them (after the resize
   policy), and the file name each output must have (``<task_id>.png``);
2. ``import_outputs`` (``sxbench import``): every expected file is read and checked (exists, decodes, 8-bit
   RGB, the protocol's resolution), stored as if a native method named ``NAME`` had produced it, and scored with
   the protocol's metrics by the same ``sxbench.evaluation.Evaluator`` as ``sxbench run``'s outputs. A
   missing, unreadable, non-RGB, wrong-size or unexpected file gives one line naming it and the fix; the rest
   is scored.

Store keys: the method is ``ImportedMethodInfo(name=NAME, version="imported", params={"digest": D})`` with
``D`` a hash of the imported pixels (task id and RGB bytes of every valid file). Its ``config_hash`` enters
each sample key like any method's, so importing the same images again finds them stored and recomputes
nothing, while changed images get new keys; the earlier import of ``NAME`` under this protocol is then
removed (samples, values, set values, PNGs), so one name never holds two versions. Reference, notes,
folder and date live outside the key (``reference`` and ``provenance``), so re-annotating never re-scores.
``NAME`` is not a registered method, so ``sxbench run`` cannot regenerate it; names of registered methods are
refused.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageOps
from tqdm.auto import tqdm

from sxbench import registry
from sxbench.interfaces import PairSpec, Protocol
from sxbench.evaluation import Item, chunks
from sxbench.records import IMPORTED_VERSION, ImportedMethodInfo, SampleRecord, stable_hash
from sxbench.lock import run_lock
from sxbench.runner import (RunConfig, atomic_write, closing_run, prepare, provenance, reconcile, remove_output,
                            remove_stale_temporaries, run_record, sample_key, save_inputs, write_png)
from sxbench.store import DB_NAME, Store

log = logging.getLogger(__name__)

TASK_COLUMNS = ("task_id", "pair_id", "content_id", "style_id", "split", "level", "family", "seed", "resolution",
                "content_path", "style_path", "output_file", "protocol", "protocol_version")
"""Columns of the task CSV; ``content_path`` and ``style_path`` are relative to the CSV's folder."""

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def safe_name(text: str) -> str:
    """``text`` as a portable file stem: kept when it is one already, else sanitised plus a short hash (so two
    identifiers never share a file)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return text if s == text and s else f"{s or 'id'}-{stable_hash(text, 6)}"


@dataclass(frozen=True)
class Task:
    """One (pair, seed) cell of a protocol's work list."""

    task_id: str
    """``<pair_id>__s<seed>``, made file-safe."""
    pair: PairSpec
    """The pair."""
    seed: int
    """Seed a native method would get."""

    @property
    def output_file(self) -> str:
        """File name the external method's output must have in the import folder."""
        return f"{self.task_id}.png"


def task_list(pairs: Sequence[PairSpec], seeds: Sequence[int]) -> list[Task]:
    """Tasks in the runner's order: pairs outer, seeds inner."""
    return [Task(f"{safe_name(p.pair_id)}__s{s}", p, int(s)) for p in pairs for s in seeds]


def write_tasks(protocol: Protocol, out: str | Path, seeds: Sequence[int] | None = None) -> tuple[Path, list[Task]]:
    """Write ``out`` (a ``.csv``; columns ``TASK_COLUMNS``) and the input images under ``<out stem>/inputs/``.

    Inputs are the protocol's ``content``/``style`` images as PNG, pixel for pixel what ``stylize_batch``
    receives (contents at ``resolution × resolution``; styles as the protocol gives them).

    Returns:
        The CSV path and the tasks.
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: give a .csv file name, e.g. tasks.csv (inputs go to {out.with_suffix('')}/inputs/)")
    spec = protocol.spec
    tasks = task_list(spec.pairs, tuple(seeds or spec.seeds))
    if not tasks:
        raise ValueError(f"protocol {spec.name!r} has no pairs; nothing to write")
    inputs = out.with_suffix("") / "inputs"
    paths: dict[tuple[str, str], str] = {}
    for kind, ids, get in (("content", [t.pair.content_id for t in tasks], protocol.content),
                           ("style", [t.pair.style_id for t in tasks], protocol.style)):
        for image_id in dict.fromkeys(ids):
            path = inputs / kind / f"{safe_name(image_id)}.png"
            write_png(get(image_id), path)
            paths[(kind, image_id)] = path.relative_to(out.parent).as_posix()
    rows = [{"task_id": t.task_id, "pair_id": t.pair.pair_id, "content_id": t.pair.content_id,
             "style_id": t.pair.style_id, "split": t.pair.split, "level": t.pair.level, "family": t.pair.family,
             "seed": t.seed, "resolution": spec.resolution, "content_path": paths[("content", t.pair.content_id)],
             "style_path": paths[("style", t.pair.style_id)], "output_file": t.output_file, "protocol": spec.name,
             "protocol_version": spec.version} for t in tasks]

    def write(fh) -> None:
        text = io.TextIOWrapper(fh, newline="", encoding="utf-8")
        w = csv.DictWriter(text, fieldnames=TASK_COLUMNS)
        w.writeheader()
        w.writerows(rows)
        text.flush()
        text.detach()

    atomic_write(out, write)
    return out, tasks


def read_output(path: Path, size: int) -> tuple[Image.Image | None, str | None]:
    """``(image, None)`` for a valid output, else ``(None, one line naming the file, the problem and the fix)``."""
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob(f"{glob.escape(path.stem)}.*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p != path)
        found = f" (found {', '.join(others)}: save it as PNG under this name)" if others else ""
        return None, f"{path}: missing{found}; write this task's output there and import again"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size  # from the header: a file of the wrong size is never decoded (decompression bombs)
                if (w, h) != (size, size) and (h, w) != (size, size):
                    return None, (f"{path}: {w}×{h} pixels, expected {size}×{size} (the protocol's resolution); "
                                  f"produce it at {size}×{size} from the task's inputs and import again")
                im.load()
                im = ImageOps.exif_transpose(im)
    except Exception as exc:  # PIL raises many kinds for damaged files
        return None, (f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); write it again as an "
                      "RGB PNG and import again")
    if im.mode != "RGB":
        return None, (f"{path}: image mode {im.mode}, expected 8-bit RGB; convert it (e.g. PIL "
                      "`Image.open(f).convert('RGB').save(f)`) and import again")
    if im.size != (size, size):
        return None, (f"{path}: {im.width}×{im.height} pixels, expected {size}×{size} (the protocol's resolution); "
                      f"produce it at {size}×{size} from the task's inputs and import again")
    return im, None


@dataclass(frozen=True)
class ImportSummary:
    """What an import did."""

    run_dir: Path
    """Run folder (store and report)."""
    method: str
    """Name the outputs are stored under."""
    method_config: str
    """``config_hash`` of the import (part of every sample key)."""
    imported: int
    """Valid outputs stored and scored in this invocation."""
    already_stored: int
    """Valid outputs found stored from an identical earlier import."""
    problems: tuple[str, ...]
    """One line per missing, unreadable, non-RGB, wrong-size or unexpected file."""
    replaced: int
    """Samples of an earlier, different import of the same name removed."""
    rescored: int
    """Stored samples (of any method) that received missing metric values."""
    skipped_metrics: dict[str, str]
    """Metric name → reason it was not computed."""


class Importer:
    """A producer whose outputs come from files; the run's ``Evaluator`` scores them as it scores ``Runner``'s."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.protocol, self.pairs, self.seeds, self.evaluator = prepare(config)
        self.skipped_metrics = self.evaluator.skipped

    def import_outputs(self, directory: str | Path, name: str, *, reference: str = "", notes: str = "") -> ImportSummary:
        cfg, spec = self.config, self.protocol.spec
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such folder; give the folder holding the <task_id>.png outputs "
                                    f"(`sxbench tasks --protocol {spec.name}` lists the names)")
        tasks = task_list(self.pairs, self.seeds)
        size = spec.resolution
        images: dict[str, str] = {}  # task_id → sha256 of its pixels; images are read again to score (memory)
        problems: dict[str, str] = {}  # task_id → line
        for t in tasks:
            im, why = read_output(directory / t.output_file, size)
            if im is None:
                problems[t.task_id] = why
            else:
                images[t.task_id] = hashlib.sha256(im.tobytes()).hexdigest()
        expected = {t.output_file for t in tasks}
        extra = []
        for p in sorted(directory.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in expected and not p.name.startswith("."):
                if p.with_suffix(".png").name in expected and not p.with_suffix(".png").is_file():
                    continue  # already named in that task's "missing" line
                seed_hint = " (a task of another seed? give import the same --seeds as tasks)" \
                    if re.fullmatch(r".+__s\d+\.png", p.name) else ""
                extra.append(f"{p}: not in the task list of {spec.name} (seeds {', '.join(map(str, self.seeds))})"
                             f"{seed_hint}; ignored: rename it to its task's output_file or remove it")
        if tasks and not images:
            raise ValueError(f"{directory}: none of the {len(tasks)} expected outputs is usable (e.g. "
                             f"{tasks[0].output_file}); write them as `sxbench tasks --protocol {spec.name}` lists, "
                             f"then import again. First problem: {next(iter(problems.values()))}")
        digest = hashlib.sha256()
        for t in tasks:
            if t.task_id in images:
                digest.update(f"{t.task_id}\0{images[t.task_id]}\n".encode())
        info = ImportedMethodInfo(
            name=name, version=IMPORTED_VERSION, params={"digest": digest.hexdigest()[:16]}, reference=reference,
            deterministic=False,
            provenance={"source": str(directory.resolve()), "notes": notes,
                        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "files": len(images), "problems": len(problems) + len(extra)},
        )
        lines = tuple(problems.values()) + tuple(extra)
        for line in lines:
            log.debug("%s", line)  # the CLI prints them; library callers read ImportSummary.problems
        with run_lock(self.run_dir):
            store = Store(self.run_dir)
            try:
                return self._store(store, info, directory, tasks, images, problems, lines, reference)
            finally:
                store.close()

    def _store(self, store: Store, info: ImportedMethodInfo, directory: Path, tasks: list[Task], images: dict[str, str],
               problems: dict[str, str], lines: tuple[str, ...], reference: str) -> ImportSummary:
        cfg, spec, name = self.config, self.protocol.spec, info.name
        store.close_stale_runs()
        replaced = self._replace_earlier(store, info)
        config = run_record(spec, self.seeds, cfg.limit, len(self.pairs), [name], self.evaluator) | {
            "import": {"method": name, "method_config": info.config_hash, **info.provenance, "reference": reference}}
        prov = provenance(cfg.device) | {"input_errors": list(self.protocol.input_errors),
                                          "skipped_metrics": dict(self.skipped_metrics), "import_problems": list(lines)}
        run_id = store.begin_run(spec.name, config, prov)
        with closing_run(store, run_id, prov):
            remove_stale_temporaries(self.run_dir)
            self.evaluator.register(store)
            save_inputs(self.protocol, self.pairs, self.run_dir)
            store.register_method(info)
            keys = {t.task_id: sample_key(info.config_hash, spec, t.pair, t.seed) for t in tasks}
            reconcile(store, self.run_dir, info, spec, [(t.pair, t.seed, keys[t.task_id]) for t in tasks])
            status = store.sample_status(keys.values())
            todo = [t for t in tasks if t.task_id in images and status.get(keys[t.task_id]) != "ok"]
            for t in tasks:
                if t.task_id in problems:  # recorded as failed samples, so the report counts them
                    store.write_sample(self._record(info, run_id, t, keys[t.task_id], error=problems[t.task_id]))
            for chunk in tqdm(list(chunks(todo, max(1, cfg.batch_size))), desc=f"import {name}",
                              disable=not cfg.progress or not todo):
                ks = [keys[t.task_id] for t in chunk]
                outs = [self._reread(directory / t.output_file, images[t.task_id]) for t in chunk]
                values = self.evaluator.score([Item(k, t.pair, im) for t, k, im in zip(chunk, ks, outs)])
                for t, k, im in zip(chunk, ks, outs):
                    rel = f"images/{name}/{k}.png"
                    write_png(im, self.run_dir / rel)
                    store.write_sample(self._record(info, run_id, t, k, output_path=rel), values.get(k, []))
            rescored = self.evaluator.finish(store, self.run_dir, [name])
        return ImportSummary(self.run_dir, name, info.config_hash, len(todo), len(images) - len(todo), lines,
                             replaced, rescored, dict(self.skipped_metrics))

    def _reread(self, path: Path, sha: str) -> Image.Image:
        im, why = read_output(path, self.protocol.spec.resolution)
        if im is None or hashlib.sha256(im.tobytes()).hexdigest() != sha:
            raise ValueError(f"{path} changed during the import ({why or 'other pixels'}); import again")
        return im

    def _record(self, info: ImportedMethodInfo, run_id: str, t: Task, key: str, *, output_path: str | None = None,
                error: str | None = None) -> SampleRecord:
        spec = self.protocol.spec
        return SampleRecord(
            sample_key=key, run_id=run_id, method=info.name, method_config=info.config_hash, protocol=spec.name,
            protocol_version=spec.version, pair_id=t.pair.pair_id, content_id=t.pair.content_id,
            style_id=t.pair.style_id, seed=t.seed, split=t.pair.split, level=t.pair.level, family=t.pair.family,
            status="error" if error else "ok", error=error, output_path=output_path,
            latency_s=float("nan"), batch_size=1, peak_memory_bytes=0, memory_kind="not measured (imported)",
            device="external", setup=spec.setup(t.pair), resolution=spec.resolution,
        )

    def _replace_earlier(self, store: Store, info: ImportedMethodInfo) -> int:
        """Remove this protocol's samples of an earlier, different import under ``info.name``; refuse a name the
        store holds native outputs under."""
        spec = self.protocol.spec
        methods = store.methods()
        native = [c for (m, c), i in methods.items() if m == info.name and i.get("version") != IMPORTED_VERSION]
        samples = store.samples()
        mine = samples[samples.method == info.name]
        if native or not set(mine.method_config) <= {c for (m, c) in methods if m == info.name}:
            raise ValueError(f"{self.run_dir} holds outputs that sxbench produced for a method named {info.name!r}; "
                             "import under another name (--as)")
        old = mine[(mine.method_config != info.config_hash) & (mine.protocol == spec.name)]
        if not len(old):
            return 0
        n = store.delete_samples(old.sample_key)  # rows first: a crash in between leaves stray files, not dangling rows
        for rel in old.output_path.dropna():
            remove_output(self.run_dir, rel)  # only inside the run folder, whatever the database says
        left = set(mine[~mine.sample_key.isin(old.sample_key)].method_config)
        for config in set(old.method_config) - left:
            store.delete_method(info.name, config)
        log.info("%s: replaced %d samples of an earlier import", info.name, n)
        return n


def check_name(name: str) -> None:
    """Refuse names that cannot be a folder name or that belong to a runnable (registered) method."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"--as {name!r}: use letters, digits, '.', '_' or '-' (it names a folder of images)")
    if name in registry.methods:
        raise ValueError(f"--as {name!r} is a registered method; sxbench can run it itself. Import under another "
                         f"name, e.g. --as {name}-ext")


def import_outputs(directory: str | Path, name: str, config: RunConfig, *, reference: str = "",
                   notes: str = "") -> ImportSummary:
    """Validate, store and score ``directory/<task_id>.png`` as method ``name`` under ``config.protocol`` (its
    ``methods`` are ignored). The caller renders the report (``sxbench.report.render``)."""
    from dataclasses import replace

    check_name(name)
    return Importer(replace(config, methods=(name,))).import_outputs(directory, name, reference=reference, notes=notes)


def imported_methods(run_dir: str | Path) -> set[str]:
    """Names of imported methods in ``run_dir``'s store (empty when there is none)."""
    if not (Path(run_dir) / DB_NAME).is_file():
        return set()
    with Store(run_dir) as store:
        return {m for (m, _), i in store.methods().items() if i.get("version") == IMPORTED_VERSION}


__all__ = ["ImportSummary", "Importer", "TASK_COLUMNS", "Task", "check_name", "import_outputs", "imported_methods",
           "read_output", "safe_name", "task_list", "write_tasks"]
