"""The HTML report: store → summary tables → figures → ``index.html`` (jinja2, autoescaped).

The report never hard-codes a metric's direction: it reads ``higher_is_better`` from each stored value.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from sxbench.interfaces import PairSpec
from sxbench.records import IMPORTED_VERSION, stable_hash
from sxbench.store import DB_NAME, Store

log = logging.getLogger(__name__)

GROUP_ORDER = ("fidelity", "style", "detail", "quality", "experts", "efficiency")
LEVEL_ORDER = ("color", "texture", "material", "stroke", "none")


def config_labels(method_infos: dict[tuple[str, str], dict[str, Any]],
                  present: Sequence[tuple[str, str]] | None = None) -> dict[tuple[str, str], str]:
    """A row name for each stored method configuration: the method's name where the store holds one configuration
    of it, else the name with the parameters that tell its configurations apart (``adain (colour=decoder)``), or
    with the configuration hash where no parameter does. ``present``: the ``(method, config)`` pairs to name
    (default: all in ``method_infos``); a store keeps the outputs of every configuration it has run, and the
    report shows them side by side rather than pooled under one name."""
    keys = sorted(set(present) if present is not None else set(method_infos))
    by_name: dict[str, list[str]] = {}
    for name, config in keys:
        by_name.setdefault(name, []).append(config)
    labels: dict[tuple[str, str], str] = {}
    for name, configs in by_name.items():
        if len(configs) == 1:
            labels[(name, configs[0])] = name
            continue
        params = {c: {k: v for k, v in method_infos.get((name, c), {}).get("params", {}).items() if k != "reproduce"}
                  for c in configs}
        differ = [k for k in sorted({k for p in params.values() for k in p})
                  if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in params.values()}) > 1]
        for c in configs:
            shown = ", ".join(f"{k}={_short(params[c].get(k))}" for k in differ)
            labels[(name, c)] = f"{name} ({shown})" if shown else f"{name} ({c[:8]})"
        if len({labels[(name, c)] for c in configs}) < len(configs):  # shortened values collide: the hashes
            labels.update({(name, c): f"{name} ({c[:8]})" for c in configs})
    return labels


def _short(v: Any, width: int = 16) -> str:
    text = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= width else text[: width - 4] + "…"


def _relabel(df: pd.DataFrame, labels: dict[tuple[str, str], str]) -> pd.DataFrame:
    """``df`` with its ``method`` column replaced by each row's configuration label."""
    if not len(df) or "method_config" not in df.columns:
        return df
    return df.assign(method=[labels.get((m, c), m) for m, c in zip(df.method, df.method_config)])


def grid_pairs(pairs: Sequence[PairSpec], n: int = 8) -> list[PairSpec]:
    """Pairs shown in the image grid: the first of each (split, level), in protocol order, at most ``n``."""
    chosen, seen = [], set()
    for p in pairs:
        if (p.split, p.level) not in seen:
            seen.add((p.split, p.level))
            chosen.append(p)
    for p in pairs:  # protocols without levels: fill up with the first pairs
        if len(chosen) >= n:
            break
        if p not in chosen:
            chosen.append(p)
    return chosen[:n]


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of the 95% Student-t confidence interval, and count."""
    from scipy import stats

    v = values.dropna().to_numpy(dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


@dataclass(frozen=True)
class Cell:
    """One leaderboard entry."""

    mean: float
    ci: float
    n: int
    rank: int | None
    best: bool

    @property
    def text(self) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        return f"{self.mean:.3f}" + (f" ± {self.ci:.3f}" if math.isfinite(self.ci) else "")


def leaderboard(values: pd.DataFrame, by: str | None = None) -> dict[str, dict[Any, dict[str, Cell]]]:
    """``{metric: {column: {method: Cell}}}``; columns are ``"all"`` or the values of ``by``."""
    out: dict[str, dict[Any, dict[str, Cell]]] = {}
    for metric, dfm in values.groupby("metric", sort=True):
        hib = bool(dfm.higher_is_better.iloc[0])
        cols: dict[Any, dict[str, Cell]] = {}
        groups = [("all", dfm)] if by is None else list(dfm.groupby(by, sort=False))
        for col, dfc in groups:
            stats = {m: mean_ci(d.value) for m, d in dfc.groupby("method")}
            means = pd.Series({m: s[0] for m, s in stats.items()}).dropna()
            ranks = means.rank(ascending=not hib, method="min").astype(int) if len(means) else pd.Series(dtype=int)
            cols[col] = {
                m: Cell(s[0], s[1], s[2], int(ranks[m]) if m in ranks else None, bool(m in ranks and ranks[m] == 1))
                for m, s in stats.items()
            }
        out[str(metric)] = cols
    return out


def _figures(values: pd.DataFrame, fig_dir: Path) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    sns.set_theme(style="whitegrid", context="paper")
    if not values.empty:
        order = sorted(values.metric.unique())
        levels = [lv for lv in LEVEL_ORDER if lv in set(values.level)]
        g = sns.catplot(data=values, x="level", y="value", hue="method", col="metric", col_order=order,
                        order=levels, kind="bar", col_wrap=4, sharey=False, height=2.6, aspect=1.25,
                        errorbar=("ci", 95), n_boot=200, seed=0)
        for ax, metric in zip(g.axes.flat, order):
            hib = bool(values[values.metric == metric].higher_is_better.iloc[0])
            ax.set_title(f"{metric} {'↑' if hib else '↓'}")
        g.savefig(fig_dir / "metrics_by_level.png", dpi=110)
        plt.close(g.figure)
        figs.append({"file": "figures/metrics_by_level.png",
                     "caption": "Mean per method and style level with 95% bootstrap CI (↑ higher is better, ↓ lower)."})
        groups = values.groupby("metric_group").metric.first().to_dict()
        fid, sty = groups.get("fidelity"), groups.get("style")
        if fid and sty:
            piv = values[values.metric.isin([fid, sty])].pivot_table(
                index=["method", "split"], columns="metric", values="value", aggfunc="mean").reset_index()
            fig, ax = plt.subplots(figsize=(5.2, 4))
            sns.scatterplot(data=piv, x=sty, y=fid, hue="method", style="split", s=90, ax=ax)
            hib_s = bool(values[values.metric == sty].higher_is_better.iloc[0])
            ax.set_xlabel(f"{sty} ({'higher' if hib_s else 'lower'} is better)")
            ax.set_ylabel(f"{fid} (higher is better)")
            ax.set_title("Content fidelity vs style similarity")
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            fig.savefig(fig_dir / "tradeoff.png", dpi=110)
            plt.close(fig)
            figs.append({"file": "figures/tradeoff.png",
                         "caption": f"Each method's mean {fid} against mean {sty}, split by seen/unseen styles."})
    return figs


def _expert_section(routing: pd.DataFrame, fig_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Expert-utilization rows per mixture method and their figures (heatmap, IoU comparison)."""
    from sxbench.metrics.experts import DIRECTIONS, expert_stats

    if routing.empty:
        return [], []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows, figs, ious = [], [], []
    fig_dir.mkdir(parents=True, exist_ok=True)
    methods = sorted(routing.method.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(6.5 * len(methods), 5), squeeze=False)
    for ax, method in zip(axes[0], methods):
        d = routing[routing.method == method]
        st = expert_stats(d, int(d.num_experts.iloc[0]))
        rows.append({"method": method, "n_styles": st.n_styles, "num_experts": st.num_experts, **st.values})
        sns.heatmap(st.usage_by_family, ax=ax, cmap="viridis", vmin=0, cbar_kws={"label": "fraction of styles"})
        ax.set_title(f"{method}: expert usage by style family (mean over layers)")
        ax.set_xlabel("expert")
        for kind in ("similar", "related", "dissimilar"):
            ious.append({"method": method, "pairs": kind, "IoU": st.values[f"routing_iou_{kind}"]})
    fig.tight_layout()
    fig.savefig(fig_dir / "expert_usage.png", dpi=100)
    plt.close(fig)
    figs.append({"file": "figures/expert_usage.png",
                 "caption": "How often each expert is chosen for the styles of each family (averaged over layers)."})
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.barplot(pd.DataFrame(ious), x="method", y="IoU", hue="pairs", ax=ax)
    ax.axhline(0.3318, ls="--", c="k", lw=0.8)
    ax.axhline(0.1060, ls=":", c="k", lw=0.8)
    ax.set_title("Routing IoU between styles (paper: 33.18% similar, 10.60% dissimilar)", fontsize=9)
    fig.tight_layout()
    fig.savefig(fig_dir / "routing_iou.png", dpi=110)
    plt.close(fig)
    figs.append({"file": "figures/routing_iou.png",
                 "caption": "Expert-set IoU for pairs of styles of the same family (similar), the same level "
                            "(related) and different levels (dissimilar); dashed/dotted: the paper's figures."})
    return [r | {"directions": DIRECTIONS} for r in rows], figs


def _training_curves(method_infos: list[dict[str, Any]], fig_dir: Path) -> list[dict[str, str]]:
    """Loss curves of every training log (``*.json`` with a ``history``) in a method's checkpoint folder."""
    logs = []
    for m in method_infos:
        ckpt = m.get("params", {}).get("checkpoint")
        if not ckpt or not Path(ckpt).is_dir():
            continue
        for f in sorted(Path(ckpt).glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and isinstance(data.get("history"), list) and data["history"]:
                h = pd.DataFrame(data["history"])
                h["curve"] = f"{m['name']}: {data.get('stage', f.stem)}"
                logs.append(h)
    if not logs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.concat(logs).drop_duplicates(["curve", "step"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for curve, d in df.groupby("curve"):
        smooth = d.loss.rolling(max(1, len(d) // 50), min_periods=1).mean()
        ax.plot(d.step, smooth, label=curve, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / "training_loss.png", dpi=110)
    plt.close(fig)
    return [{"file": "figures/training_loss.png", "caption": "Training losses read from the methods' checkpoint folders."}]


def render(run_dir: str | Path, bench: Sequence[str | Path] = ()) -> Path:
    """Write ``run_dir/index.html`` (and ``figures/``) from the store in ``run_dir``.

    Benchmark JSON (pytest-benchmark, from ``benchmarks/``) found in ``run_dir/bench/`` or given in ``bench``
    adds a latency section.
    """
    import jinja2

    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {DB_NAME} here; run `sxbench run --out {run_dir}` first")
    with Store(run_dir) as store:
        values = store.values()
        samples = store.samples()
        runs = store.runs()
        metric_infos = store.metrics()
        method_infos = store.methods()
        routing = store.routing()
        set_values = store.set_values()

    # one row per stored configuration: a method run with other parameters (or retrained weights) is not pooled
    labels = config_labels(method_infos, list(samples[["method", "method_config"]].drop_duplicates().itertuples(
        index=False, name=None)) if len(samples) else [])
    values, samples, routing, set_values = (_relabel(d, labels) for d in (values, samples, routing, set_values))
    last = runs.iloc[-1] if len(runs) else None
    config = json.loads(last.config) if last is not None else {}
    prov = json.loads(last.provenance) if last is not None else {}
    metric_rows = sorted(metric_infos.values(), key=lambda m: (GROUP_ORDER.index(m["group"]) if m["group"] in GROUP_ORDER else 99, m["name"]))
    present = set(values.metric.unique())
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in metric_rows:
        if m["name"] in present:
            groups.setdefault(m["group"], []).append(m)
    methods = sorted(samples.method.unique()) if len(samples) else []

    board = leaderboard(values)
    by_split = leaderboard(values, "split")
    by_level = leaderboard(values, "level")
    splits = [s for s in ("seen", "unseen", "all") if s in set(values.split)]
    levels = [lv for lv in LEVEL_ORDER if lv in set(values.level)]

    ok = samples[samples.status == "ok"]
    errors = samples[samples.status == "error"]
    imported = {labels.get(k, i["name"]): i.get("provenance", {}) | {"reference": i["reference"],
                                                                       "digest": i["params"].get("digest")}
                for k, i in method_infos.items() if i["version"] == IMPORTED_VERSION}  # `sxbench import`
    cost = []
    for (m, mc), d in ok.groupby(["method", "method_config"]):
        if m in imported:  # made outside sxbench: nothing measured
            continue
        cost.append({"method": m, "config": mc, "n": len(d), "latency_ms": 1000 * d.latency_s.median(),
                     "peak_mb": d.peak_memory_bytes.max() / 2**20, "memory_kind": d.memory_kind.iloc[0],
                     "device": d.device.iloc[0]})

    # image grid: pairs chosen exactly as the runner chose them when saving inputs
    grid = []
    if len(ok):
        pair_rows = samples.drop_duplicates("pair_id")
        pairs = [PairSpec(r.pair_id, r.content_id, r.style_id, r.split, r.level, r.family,
                          (run_dir / f"inputs/target/{stable_hash(r.pair_id, 16)}.png").exists())
                 for r in pair_rows.itertuples()]
        seed0 = ok.seed.min()
        for p in grid_pairs(pairs):
            cells = {r.method: r.output_path for r in ok[(ok.pair_id == p.pair_id) & (ok.seed == seed0)].itertuples()}
            def existing(rel: str | None) -> str | None:
                return rel if rel and (run_dir / rel).is_file() else None

            grid.append({
                "pair": p,
                "content": existing(f"inputs/content/{stable_hash(p.content_id, 16)}.png"),
                "style": existing(f"inputs/style/{stable_hash(p.style_id, 16)}.png"),
                "target": existing(f"inputs/target/{stable_hash(p.pair_id, 16)}.png"),
                "outputs": [existing(cells.get(m)) for m in methods],
            })

    figures = _figures(values, run_dir / "figures") if len(values) else []
    expert_rows, expert_figs = _expert_section(routing, run_dir / "figures")
    infos = sorted(method_infos.values(), key=lambda m: m["name"])
    cards = _method_cards(method_infos, cost, imported, labels)
    figures += expert_figs + _training_curves(infos, run_dir / "figures")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    set_table = _set_table(set_values)
    from sxbench.report import bench as bench_lib

    bench_files = sorted((run_dir / "bench").glob("*.json")) + [Path(b) for b in bench]
    bench_rows = bench_lib.load(bench_files) if bench_files else []
    if bench_rows:
        fig = bench_lib.plot(bench_rows, run_dir / "figures" / "latency.png")
        if fig:
            figures.append({"file": "figures/latency.png", "caption": "Transformer step latency vs resolution (benchmarks)"})
    html = env.get_template("index.html.j2").render(
        protocol=config.get("protocol", "?"), config=config, prov=prov, runs=runs.to_dict("records"),
        groups=groups, methods=methods, board=board, by_split=by_split, by_level=by_level, splits=splits,
        levels=levels, n_samples=len(samples), n_ok=len(ok), errors=errors.head(50).to_dict("records"),
        n_errors=len(errors), cost=cost, grid=grid, figures=figures, metric_rows=metric_rows,
        method_infos=infos, expert_rows=expert_rows, set_table=set_table, bench_rows=bench_rows,
        skipped_metrics=prov.get("skipped_metrics", {}), input_errors=prov.get("input_errors", []),
        failed_methods=prov.get("failed_methods", {}), imported=imported, json=json, cards=cards,
    )
    out = run_dir / "index.html"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    log.info("report written to %s", out)
    return out


def _checksums(params: dict[str, Any], prefix: str = "", listed: bool = False) -> dict[str, str]:
    """Every ``*sha256`` / ``digest`` value in ``params``, at any depth, keyed by its dotted path; every value of a
    dict whose key ends in ``sha256`` (``{backbone: sha256}``) is ``listed``. Empty ones read "unverified"."""
    out: dict[str, str] = {}
    for k, v in params.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _checksums(v, f"{path}.", k.endswith("sha256"))
        elif listed or k.endswith("sha256") or k == "digest":
            out[path] = str(v)[:16] if v else "unverified"
    return out


def _method_cards(method_infos: dict[tuple[str, str], dict[str, Any]], cost: list[dict[str, Any]],
                  imported: dict[str, dict[str, Any]], labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """One card per stored method configuration (named by ``labels``, from ``config_labels``): reference,
    licences, weights checksums, parameters, measured seconds per image (median over this store's samples of that
    configuration) and the command that reproduces trained weights."""
    latency = {(c["method"], c["config"]): (c["latency_ms"] / 1000.0, c["device"]) for c in cost}
    cards = []
    for (name, config), m in sorted(method_infos.items()):
        flat = _checksums(m.get("params", {}))
        params = {k: v for k, v in m.get("params", {}).items()
                  if k != "reproduce" and not (k.endswith("sha256") or k == "digest")}
        reproduce = m.get("params", {}).get("reproduce")
        label = labels.get((name, config), name)  # configurations without samples: the plain name
        s, dev = latency.get((label, config), (None, None))
        cards.append({"name": label, "version": m["version"], "reference": m.get("reference", ""),
                      "licence": m.get("licence") or ("see the reference" if label in imported else "not recorded"),
                      "checksums": flat, "params": params, "s_per_image": s, "device": dev, "reproduce": reproduce,
                      "imported": label in imported})
    return cards


def _set_table(sv: pd.DataFrame) -> dict[str, Any] | None:
    """Set metric values as ``{"columns": [{metric, subset, hib}], "rows": {method: [{value, n, best}]}}``."""
    if not len(sv):
        return None
    cols = sorted({(r.metric, r.subset, bool(r.higher_is_better)) for r in sv.itertuples()},
                  key=lambda c: (c[0], c[1] != "all", c[1]))
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in sorted(sv.method.unique())}
    for metric, subset, hib in cols:
        d = sv[(sv.metric == metric) & (sv.subset == subset)]
        vals = d.value.dropna()
        best = (vals.max() if hib else vals.min()) if len(vals) else None
        for method in rows:
            hit = d[d.method == method]
            v = hit.value.iloc[0] if len(hit) and pd.notna(hit.value.iloc[0]) else None
            rows[method].append({"value": v, "n": int(hit.n.iloc[0]) if len(hit) else 0,
                                 "best": v is not None and v == best})
    return {"columns": [{"metric": m, "subset": s, "hib": h} for m, s, h in cols], "rows": rows}


def export(run_dir: str | Path, fmt: str = "csv", output: str | Path | None = None) -> Path:
    """Write the long-format results table (one value per row) as CSV or Parquet."""
    run_dir = Path(run_dir)
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, got {fmt!r}")
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {DB_NAME} here; run `sxbench run --out {run_dir}` first")
    with Store(run_dir) as store:
        df = store.values().assign(scope="sample")
        sv = store.set_values()
    if len(sv):  # set metrics: one row per (method, subset), sample columns empty
        sets = sv.rename(columns={"subset": "split"}).assign(
            scope="set", split=lambda d: d.split.str.removeprefix("split="),
            metric_version=sv.version, higher_is_better=sv.higher_is_better.astype(bool))
        df = pd.concat([df, sets[[c for c in ("method", "method_config", "split", "metric", "value", "higher_is_better",
                                              "metric_group", "metric_version", "backbone", "scope", "n")
                                  if c in sets.columns]]], ignore_index=True)
    out = Path(output) if output else run_dir / f"results.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False) if fmt == "csv" else df.to_parquet(out, index=False)
    return out


__all__ = ["Cell", "config_labels", "export", "grid_pairs", "leaderboard", "mean_ci", "render"]
