"""The report's per-sample data, loaded by the page only when the sample explorer or a pair view opens.

``data/pairs.js`` lists the pairs (ids, split, level, family and the relative paths of their content, style and
target images); ``data/m<i>.js`` holds method ``i``'s samples: ``[pair index, seed, output path or null, error or
null, value of each metric …]``. Each file is JSON wrapped in one call, ``SX.data(name, …)``, so the page reads it
with a ``<script>`` element: that works from ``file://`` (where ``fetch`` of a local file is refused) and from a
zipped copy opened anywhere. Every path is relative to the run folder.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from sxbench.records import stable_hash
from sxbench.runner import input_paths

DATA_DIR = "data"
THUMB_DIR = "thumbs"
THUMB_SIDE = 160
"""Longest side of a grid thumbnail in pixels (the grid shows images at 96 CSS pixels: 160 stays sharp on a 1.5×
screen). Smaller images are shown as they are."""


def _number(v: Any) -> float | None:
    if v is None or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(float(v)):
        return None
    return float(f"{float(v):.5g}")  # 5 significant digits: the page shows 3 decimals


def _write_js(path: Path, name: str, payload: Any) -> int:
    from sxbench.runner import atomic_write

    text = f"SX.data({json.dumps(name)}, {json.dumps(payload, separators=(',', ':'), allow_nan=False)});\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return len(text)


def write_sample_data(run_dir: Path, samples: pd.DataFrame, values: pd.DataFrame, methods: Sequence[str],
                      metrics: Sequence[str], exists: Callable[[str | None], str | None]) -> dict[str, Any]:
    """Write ``data/pairs.js`` and one ``data/m<i>.js`` per method (``methods`` in order; labels as in
    ``samples.method``). ``exists(rel)`` returns ``rel`` when that file is in the run folder, else ``None``.

    Returns the index the page embeds: ``{"methods": [{"label", "file", "n"}], "metrics": [...], "bytes": int}``.
    """
    data = run_dir / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("m*.js"):  # a method no longer in the store must not leave its file behind
        old.unlink(missing_ok=True)
    pair_rows = samples.drop_duplicates("pair_id").sort_values("pair_id") if len(samples) else samples
    pair_index: dict[str, int] = {}
    rows = []
    for i, r in enumerate(pair_rows.itertuples()):
        pair_index[r.pair_id] = i
        content, style, target = input_paths(r.pair_id, r.content_id, r.style_id)
        rows.append([r.pair_id, r.split, r.level, r.family if isinstance(r.family, str) else None,
                     exists(content), exists(style), exists(target)])
    size = _write_js(data / "pairs.js", "pairs", {"cols": ["pair_id", "split", "level", "family", "content",
                                                           "style", "target"], "rows": rows})
    wide = pd.DataFrame()
    if len(values):
        wide = values.pivot_table(index=["method", "pair_id", "seed"], columns="metric", values="value",
                                  aggfunc="first", dropna=False)
        wide = wide.reindex(columns=list(metrics))
    index = []
    by_method = dict(tuple(samples.groupby("method", sort=False))) if len(samples) else {}
    for i, method in enumerate(methods):
        d = by_method.get(method, samples.iloc[:0])
        d = d.sort_values(["pair_id", "seed"])
        vals = None
        if len(wide) and method in wide.index.get_level_values(0):
            vals = wide.xs(method, level=0)
        out = []
        for r in d.itertuples():
            v = vals.loc[(r.pair_id, r.seed)].tolist() if vals is not None and (r.pair_id, r.seed) in vals.index \
                else [None] * len(metrics)
            ok = r.status == "ok"
            out.append([pair_index[r.pair_id], int(r.seed), exists(r.output_path) if ok else None,
                        None if ok else str(r.error or "failed")[:300], *(_number(x) for x in v)])
        name = f"m{i}"
        size += _write_js(data / f"{name}.js", name, {"rows": out})
        index.append({"label": method, "file": f"{DATA_DIR}/{name}.js", "name": name, "n": len(out)})
    return {"methods": index, "metrics": list(metrics), "bytes": size}


def thumbnail(run_dir: Path, rel: str | None) -> str | None:
    """A thumbnail of the run-folder image ``rel`` for the example grid: ``rel`` itself when it is small already,
    else ``thumbs/<hash>.jpg`` (written once per source path and modification time). ``None`` stays ``None``."""
    if rel is None:
        return None
    from PIL import Image

    src = run_dir / rel
    try:
        with Image.open(src) as im:
            if max(im.size) <= THUMB_SIDE:
                return rel
            stamp = f"{rel}:{os.stat(src).st_mtime_ns}"
            out = run_dir / THUMB_DIR / f"{stable_hash(stamp, 16)}.jpg"
            if not out.is_file():
                from sxbench.runner import atomic_write

                small = im.convert("RGB")
                small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
                atomic_write(out, lambda fh: small.save(fh, format="JPEG", quality=88))
            return f"{THUMB_DIR}/{out.name}"
    except OSError:
        return rel  # unreadable: link the original, the browser shows what it can


def portable(text: str, run_dir: Path) -> str:
    """``text`` with the run folder's absolute path written ``.``, a virtual environment's ``$VIRTUAL_ENV`` (the
    command line in the provenance: ``$VIRTUAL_ENV/bin/sxbench``) and the home folder ``~``: the report names no
    folder of the machine that wrote it (a zipped run folder opens anywhere)."""
    import sys

    venv = [(Path(sys.prefix).resolve(), "$VIRTUAL_ENV"), (Path(sys.prefix), "$VIRTUAL_ENV")] \
        if sys.prefix != sys.base_prefix else []  # a system Python's /usr is no folder of this machine's own
    for root, short in ((run_dir.resolve(), "."), (run_dir.absolute(), "."), *venv, (Path.home().resolve(), "~"),
                        (Path.home(), "~")):
        s = str(root)
        if len(s) > 1:  # the whole path only: /root is replaced in /root/x, never in /rootfs
            text = re.sub(re.escape(s) + r"(?![\w.-])", short.replace("\\", "\\\\"), text)
    return text
