"""Benchmark results (pytest-benchmark JSON from ``benchmarks/``) for reports: rows, overhead ratios, Markdown,
and the latency section of the HTML report.

Ratios: in each MoE-layer group, every path against the grouped path; in each transformer-step group, every
variant against the bare transformer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

def rows(data: dict) -> list[dict]:
    out = []
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        out.append({"group": b.get("group") or e.get("group") or "", "name": b["name"], "median_ms": 1000 * b["stats"]["median"],
                    "cuda_ms": e.get("cuda_time_ms"), "variant": e.get("variant") or e.get("path") or "",
                    "peak_mb": e.get("peak_memory_mb"), "memory_kind": e.get("memory_kind", ""),
                    "device": e.get("device_name") or e.get("device", "")})
    return out


def ratios(table: list[dict]) -> dict[str, float]:
    """Per row name: its median over the group's reference (grouped path, or the bare transformer)."""
    out = {}
    for group in {r["group"] for r in table}:
        members = {r["variant"]: r for r in table if r["group"] == group}
        ref = members.get("grouped") or members.get("bare")
        if ref:
            for r in members.values():
                out[r["name"]] = r["median_ms"] / ref["median_ms"]
    return out


def markdown(data: dict) -> str:
    table = rows(data)
    ratio = ratios(table)
    machine = data.get("machine_info", {})
    lines = [f"Benchmarks on {machine.get('node', '?')} ({machine.get('cpu', {}).get('brand_raw', '?')}), "
             f"{data.get('datetime', '')}. Ratio: against the grouped MoE path (layer groups) or the bare "
             "transformer (step groups).", "",
             "| group | case | variant | median ms | CUDA ms | ratio | peak MB | device |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: (r["group"], r["name"])):
        cuda = f"{r['cuda_ms']:.3f}" if r["cuda_ms"] is not None else ""
        peak = f"{r['peak_mb']:.0f} ({r['memory_kind']})" if r["peak_mb"] is not None else ""
        rat = f"{ratio[r['name']]:.3f}" if r["name"] in ratio else ""
        lines.append(f"| {r['group']} | `{r['name']}` | {r['variant']} | {r['median_ms']:.3f} | {cuda} | {rat} | {peak} | "
                     f"{r['device']} |")
    return "\n".join(lines) + "\n"


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of every JSON in ``paths`` (unreadable files are skipped with their error as a row note)."""
    out = []
    for p in paths:
        table = rows(json.loads(Path(p).read_text()))
        ratio = ratios(table)  # once per file, not once per row
        out += [r | {"file": Path(p).name, "ratio": ratio.get(r["name"])} for r in table]
    return out


def plot(table: list[dict[str, Any]], path: Path) -> Path | None:
    """Latency vs resolution per transformer-step variant (seaborn), where step results exist."""
    import re

    steps = [r | {"resolution": int(m.group(2)), "preset": m.group(1)} for r in table
             if (m := re.match(r"step (\w+) (\d+)", r["group"]))]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(steps)
    grid = sns.relplot(data=df, x="resolution", y="median_ms", hue="variant", col="preset", kind="line", marker="o",
                       facet_kws={"sharey": False}, height=3.2)
    grid.set(yscale="log", ylabel="median ms per step")
    path.parent.mkdir(parents=True, exist_ok=True)
    from sxbench.runner import atomic_write

    atomic_write(path, lambda fh: grid.savefig(fh, dpi=110, format="png"))
    plt.close(grid.figure)
    return path
