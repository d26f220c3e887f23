"""The report's summary: the benchmark's questions, each answered by the leading method or methods with the
significance the leaderboard already computed (rank groups from paired, style- and content-clustered bootstrap
differences, Holm-adjusted), and the headline figure (fidelity against style similarity, with intervals).

Nothing here computes a statistic: it reads the leaderboard's cells (``sxbench.report.Cell``), the seen/unseen
gaps, the stored expert statistics against chance and the measured cost, and says what they show.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

PRIMARY: dict[str, tuple[str, ...]] = {
    "fidelity": ("dino_content", "content_ssim", "stlpips_content", "vgg_content_loss", "content_edge_f1"),
    "style": ("vgg_gram_style", "csd_style", "clip_style", "style_gram", "style_color_swd"),
    "detail": ("target_ssim", "target_detail", "target_psnr", "target_color_swd"),
}
"""Per question, the metrics that answer it, in order of preference: the first one the run has is the one used.
Every other metric stays in the leaderboard."""

QUESTIONS = (
    ("fidelity", "Semantic fidelity", "does the output keep the content?"),
    ("style", "Style similarity", "does it look like the reference style?"),
    ("detail", "Material and texture detail", "against the ground-truth target, where the protocol has one"),
    ("unseen", "Unseen-style generalization", "on held-out families and parameter ranges; gap to seen styles"),
    ("experts", "Expert utilization", "mixture methods' routing against its chance level"),
    ("cost", "Cost", "median seconds per image and peak memory, as measured in this run"),
)


def primary_metric(question: str, present: Iterable[str]) -> str | None:
    have = set(present)
    return next((m for m in PRIMARY[question] if m in have), None)


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def leaders(cells: Mapping[str, Any]) -> dict[str, Any] | None:
    """The leading methods of one leaderboard column (``{method: Cell}``): rank group 1 among the ranked methods,
    the column's best first, and how the group is separated from the rest. ``None`` when nothing is ranked."""
    ranked = {m: c for m, c in cells.items() if c is not None and not c.control and c.n > 0 and math.isfinite(c.mean)}
    if not ranked:
        return None
    best = next((m for m, c in ranked.items() if c.group == 1 and c.against is None), None)
    if best is None:
        best = next(m for m, c in ranked.items() if c.group == 1)
    tied = [m for m, c in ranked.items() if c.group == 1 and m != best]
    behind = sorted((m for m, c in ranked.items() if c.group != 1 and math.isfinite(c.diff)),
                    key=lambda m: abs(ranked[m].diff))
    b = ranked[best]
    if tied:
        ties = "; ".join(f"{m} {_fmt(ranked[m].diff, True)} [{_fmt(ranked[m].diff_low, True)}, "
                         f"{_fmt(ranked[m].diff_high, True)}], n={ranked[m].n_paired}, p_holm {_p(ranked[m].p_holm)}"
                         for m in tied)
        why = (f"not separable from {best} (paired difference to it, 95% CI, Holm p ≥ 0.05): {ties}")
    elif behind:
        r = ranked[behind[0]]
        why = (f"ahead of every other ranked method; the closest, {behind[0]}, differs by {_fmt(r.diff, True)} "
               f"[{_fmt(r.diff_low, True)}, {_fmt(r.diff_high, True)}] over n={r.n_paired} pairs, "
               f"p_holm {_p(r.p_holm)}")
    else:
        why = "the only ranked method"
    return {"best": best, "tied": tied, "mean": b.mean, "ci": b.ci, "n": b.n, "why": why,
            "methods": [best, *tied]}


def build(board: Mapping[str, Any], by_split: Mapping[str, Any], novelty_gaps: Mapping[str, Any],
          experts: Mapping[str, Any] | None, cost: list[dict[str, Any]], controls: Iterable[str],
          metric_info: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per question: ``{key, title, what, metric, hib, leaders: [...], text, detail}``; ``text`` names
    the leading method(s), ``detail`` the significance or the numbers behind it. A question the run cannot answer
    (no such metric, no mixture method) says so."""
    controls = set(controls)
    rows = []
    for key, title, what in QUESTIONS:
        row: dict[str, Any] = {"key": key, "title": title, "what": what, "metric": None, "hib": True,
                               "leaders": [], "text": "", "detail": ""}
        if key in PRIMARY:
            metric = primary_metric(key, board)
            if metric is None:
                row["text"] = "not measured in this run"
                row["detail"] = f"needs one of {', '.join(PRIMARY[key])}"
            else:
                lead = leaders(board[metric].get("all", {}))
                row |= {"metric": metric, "hib": bool(metric_info.get(metric, {}).get("higher_is_better", True))}
                if lead:
                    row["leaders"] = lead["methods"]
                    row["text"] = " and ".join(lead["methods"])
                    row["detail"] = (f"{lead['best']}: {_fmt(lead['mean'])} ± {_fmt(lead['ci'])} (n={lead['n']}); "
                                     f"{lead['why']}")
                else:
                    row["text"] = "no ranked method has a value"
        elif key == "unseen":
            metric = primary_metric("detail", board) or primary_metric("style", board)
            cells = by_split.get(metric, {}).get("unseen", {}) if metric else {}
            lead = leaders(cells) if cells else None
            if not lead:
                row["text"] = "no unseen styles in this run" if metric else "not measured in this run"
            else:
                row |= {"metric": metric, "hib": bool(metric_info.get(metric, {}).get("higher_is_better", True)),
                        "leaders": lead["methods"], "text": " and ".join(lead["methods"])}
                gaps = []
                for m in lead["methods"]:
                    g = (novelty_gaps or {}).get(metric, {}).get(m) or {}
                    for kind, label in (("new_family", "new family"), ("new_range", "new range")):
                        k = g.get(kind)
                        if k and k.get("gap") is not None:
                            ci = (f" [{_fmt(k['ci_low'], True)}, {_fmt(k['ci_high'], True)}]"
                                  if k.get("ci_low") is not None else "")
                            gaps.append(f"{m} {label} − seen {_fmt(k['gap'], True)}{ci} (n={k['n']})")
                row["detail"] = (f"on unseen pairs {lead['best']}: {_fmt(lead['mean'])} ± {_fmt(lead['ci'])} "
                                 f"(n={lead['n']}); {lead['why']}" + (f". Gaps: {'; '.join(gaps)}" if gaps else ""))
        elif key == "experts":
            chance = (experts or {}).get("chance") or []
            if not chance:
                row["text"] = ("no mixture method in this run" if not experts else
                               "no chance level stored: run sxbench run again to compute it")
            else:
                per: dict[str, list[str]] = {}
                beyond: dict[str, int] = {}
                for r in chance:
                    good = r["diff"] is not None and r["lo"] is not None and (
                        (r["hib"] and r["lo"] > 0) or (not r["hib"] and r["hi"] < 0))
                    beyond[r["method"]] = beyond.get(r["method"], 0) + int(good)
                    if r["diff"] is not None:
                        per.setdefault(r["method"], []).append(
                            f"{r['metric']} − chance {_fmt(r['diff'], True)} [{_fmt(r['lo'], True)}, "
                            f"{_fmt(r['hi'], True)}]{' ✓' if good else ''}")
                top = max(beyond.values())
                row["leaders"] = [m for m, v in beyond.items() if v == top and top > 0]
                total = max(sum(r["method"] == m for r in chance) for m in row["leaders"]) if row["leaders"] else 0
                row["text"] = (" and ".join(row["leaders"]) + f": {top} of {total} statistics better than chance"
                               if row["leaders"] else "no method's routing beats chance")
                row["detail"] = " | ".join(f"{m} (n={next(r['n'] for r in chance if r['method'] == m)} styles): "
                                           + "; ".join(v) for m, v in per.items())
        elif key == "cost":
            ranked = [c for c in cost if c["method"] not in controls]
            if not ranked:
                row["text"] = "no method measured"
            else:
                fast = min(ranked, key=lambda c: c["latency_ms"])
                small = min(ranked, key=lambda c: c["peak_mb"])
                row["leaders"] = [fast["method"]]
                row["text"] = f"{fast['method']} (fastest)"
                row["detail"] = (f"{fast['method']}: {fast['latency_ms'] / 1000:.3f} s/image median over n={fast['n']} "
                                 f"on {fast['device']}; lowest peak memory: {small['method']} {small['peak_mb']:.0f} MiB "
                                 f"({small['memory_kind']}; on CPU the whole process's resident set). One measurement per "
                                 "sample, no interval; GPU latency: nox -s gpu_bench")
        rows.append(row)
    return rows


def headline_figure(board: Mapping[str, Any], fid: str | None, sty: str | None, controls: Iterable[str],
                    metric_info: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """Fidelity (y) against style similarity (x): one marker per method at its means, with 95% interval bars on
    both axes; controls hollow and grey. Written to ``path``; ``False`` when either metric is missing."""
    if not fid or not sty or fid not in board or sty not in board:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sxbench.report import _save

    controls = set(controls)
    xs, ys = board[sty].get("all", {}), board[fid].get("all", {})
    methods = sorted(m for m in xs if m in ys and xs[m] is not None and ys[m] is not None
                     and math.isfinite(xs[m].mean) and math.isfinite(ys[m].mean))
    if not methods:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(m for m in methods if m not in controls):
        x, y = xs[m], ys[m]
        ax.errorbar(x.mean, y.mean, xerr=x.ci if math.isfinite(x.ci) else None,
                    yerr=y.ci if math.isfinite(y.ci) else None, fmt="o", ms=7, color=cmap(i % 10), capsize=3,
                    label=m)
    for m in (m for m in methods if m in controls):
        x, y = xs[m], ys[m]
        ax.errorbar(x.mean, y.mean, xerr=x.ci if math.isfinite(x.ci) else None,
                    yerr=y.ci if math.isfinite(y.ci) else None, fmt="o", ms=7, mfc="none", color="0.55",
                    capsize=3, label=f"{m} (control)")
    for m in methods:
        ax.annotate(m, (xs[m].mean, ys[m].mean), textcoords="offset points", xytext=(5, 4), fontsize=7)

    def side(metric: str) -> str:
        return "higher is better" if metric_info.get(metric, {}).get("higher_is_better", True) else "lower is better"

    ax.set_xlabel(f"{sty} ({side(sty)})")
    ax.set_ylabel(f"{fid} ({side(fid)})")
    ax.set_title("Fidelity against style similarity (means, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, path, 110)
    return True
