"""A method's identity (``params``: parameters and weights sha256) keys its outputs; its provenance (checkpoint
folder, reproduce command) does not. A clone moved to another folder keeps every stored output, and stores written
when the provenance was part of ``params`` are rehashed on open."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord, stable_hash
from sxbench.store import SCHEMA_VERSION, Store

PACKAGED = Path(__file__).parents[1] / "styleexpert" / "checkpoints"
REPRODUCE = "sxbench train all --preset tiny-v2 --out runs/styleexpert-tiny-v2 --batch-size 16 --steps2 1000 --install"


def _key(config: str, pair: str, seed: int = 0) -> str:
    """The runner's sample key formula written out, for pairs ``pair`` with content ``c-pair``, style ``s-pair``."""
    return stable_hash([config, "synth-smoke", "1", pair, f"c-{pair}", f"s-{pair}", seed], 24)


def _legacy_hash(params: dict) -> str:
    """``config_hash`` as schema-1 stores computed it: over params that still held the provenance."""
    return stable_hash({"name": "styleexpert", "version": "1", "params": params})


def test_config_hash_ignores_provenance():
    params = {"steps": 4, "guidance": None, "weights_sha256": "ab" * 32}
    a = MethodInfo("styleexpert", "1", params, provenance={"checkpoint": "/a/styleexpert", "reproduce": "x"})
    b = MethodInfo("styleexpert", "1", dict(params), provenance={"checkpoint": "/b/styleexpert"})
    assert a.config_hash == b.config_hash == MethodInfo("styleexpert", "1", dict(params)).config_hash
    assert MethodInfo("styleexpert", "1", params | {"weights_sha256": "cd" * 32}).config_hash != a.config_hash
    assert a.to_dict()["provenance"] == {"checkpoint": "/a/styleexpert", "reproduce": "x"}


def test_the_tests_key_formula_is_the_legacy_one():
    """``_key`` (this file's independent copy of the formula, used to build schema-1 stores) is the key without a
    setup, as stores before schema 3 computed it."""
    from sxbench.records import sample_key_of

    assert _key("cfg", "p1", 3) == sample_key_of("cfg", "synth-smoke", "1", "p1", "c-p1", "s-p1", 3)


def _clone(dest: Path) -> Path:
    """The packaged tiny StyleExpert checkpoint and its shared base (``base_ref: ../tiny-base``) copied to ``dest``."""
    for name in ("styleexpert", "tiny-base"):
        shutil.copytree(PACKAGED / name, dest / name)
    return dest / "styleexpert"


def test_a_moved_clone_keeps_its_stored_outputs(tmp_path, tiny_weights):
    from sxbench.report import render
    from sxbench.runner import RunConfig, Runner

    run = tmp_path / "run"
    summaries = []
    for where in ("A", "B"):
        ckpt = _clone(tmp_path / where)
        cfg = RunConfig("synth-smoke", methods=("styleexpert",), out=run, limit=2, metrics=("content_ssim",),
                        method_args={"styleexpert": {"checkpoint": str(ckpt), "steps": 2}}, progress=False,
                        weights_dir=tiny_weights)
        summaries.append(Runner(cfg).run())
    assert summaries[0].generated == 2 and summaries[0].failed == 0
    assert summaries[1].generated == 0 and summaries[1].skipped == 2
    with Store(run) as st:
        methods = st.methods()
        samples = st.samples()
    assert list(k[0] for k in methods) == ["styleexpert"]
    (info,) = methods.values()
    assert "checkpoint" not in info["params"] and "reproduce" not in info["params"] and info["params"]["weights_sha256"]
    # registered again by the second run: the card shows where the weights are now
    assert info["provenance"] == {"checkpoint": str(tmp_path / "B" / "styleexpert"), "reproduce": REPRODUCE}
    assert len(samples) == 2 and samples.method_config.nunique() == 1
    html = render(run).read_text()
    assert REPRODUCE in html and f"checkpoint: {tmp_path / 'B' / 'styleexpert'}" in html
    assert (run / "figures" / "training_loss.png").is_file()  # the training logs, found through the provenance


def _sample(key: str, config: str, pair: str, run_id: str, method: str = "styleexpert") -> SampleRecord:
    return SampleRecord(
        sample_key=key, run_id=run_id, method=method, method_config=config, protocol="synth-smoke",
        protocol_version="1", pair_id=pair, content_id=f"c-{pair}", style_id=f"s-{pair}", seed=0, split="seen",
        level="color", family="none", status="ok", error=None, output_path=f"images/{method}/{key}.png",
        latency_s=0.1, batch_size=1, peak_memory_bytes=1, memory_kind="cpu_rss", device="cpu")


METRIC = MetricInfo("content_ssim", True, (0.0, 1.0), "fidelity", frozenset({"content"}))
SET_METRIC = MetricInfo("fid", False, (0.0, float("inf")), "quality", frozenset(), scope="set")


def _write_legacy(store: Store, params: dict, pairs: dict[str, float], run_id: str, *, raw: bool = False) -> str:
    """A schema-1 ``styleexpert`` configuration: its provenance inside ``params`` (so inside the hash), samples of
    ``pairs`` (``{pair: content_ssim value}``) with metric values and routing, and one set value; its hash."""
    info = MethodInfo("styleexpert", "1", params, reference="ref", deterministic=False, licence="lic")
    old = info.config_hash
    assert old == _legacy_hash(params)
    if raw:  # byte for byte as schema 1 wrote it: MethodInfo had no provenance field
        d = info.to_dict()
        del d["provenance"]
        store.conn.execute("INSERT INTO methods VALUES (?, ?, ?)", ("styleexpert", old, json.dumps(d)))
    else:
        store.register_method(info)
    for pair, value in pairs.items():
        key = _key(old, pair)
        store.write_sample(_sample(key, old, pair, run_id),
                           [MetricValue(key, METRIC.name, value, True, METRIC.group, METRIC.version, None)],
                           [("block0", 0, 3, 0.75, 16), ("block0", 1, 5, 0.25, 16)])
    store.write_set_value("styleexpert", old, SET_METRIC, "all", 12.5 if run_id == "A" else 7.5, len(pairs), "h-" + old)
    return old


def test_legacy_store_is_rehashed_on_open_and_clones_merge(tmp_path, caplog):
    from sxbench.report import render

    base = {"steps": 4, "guidance": None, "weights_sha256": "ab" * 32}
    with Store(tmp_path) as st:
        st.begin_run("synth-smoke", {"protocol": "synth-smoke"}, {})
        st.register_metric(METRIC)
        old_a = _write_legacy(st, base | {"checkpoint": "/a/styleexpert", "reproduce": REPRODUCE},
                              {"p1": 0.1, "p2": 0.2}, "A", raw=True)
        old_b = _write_legacy(st, base | {"checkpoint": "/b/styleexpert", "reproduce": REPRODUCE},
                              {"p2": 0.9, "p3": 0.3}, "B")
        # the clone at /b ran later: its p2 is the most recent sample of that cell
        st.conn.execute("UPDATE samples SET created = CASE run_id WHEN 'A' THEN 100.0 ELSE 200.0 END")
        other = MethodInfo("reinhard", "1", {"strength": 1.0})  # no provenance in params: left alone
        st.register_method(other)
        st.write_sample(_sample(_key(other.config_hash, "p1"), other.config_hash, "p1", "A", "reinhard"))
        st.conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    assert old_a != old_b

    caplog.set_level(logging.INFO, logger="sxbench.store")
    with Store(tmp_path) as st:
        methods = st.methods()
        samples = st.samples().set_index("pair_id")
        values = st.values()
        routing = st.routing()
        sets = st.set_values()
        meta = dict(st.conn.execute("SELECT key, value FROM meta"))
    lines = [r.getMessage() for r in caplog.records if r.name == "sxbench.store"]
    assert len(lines) == 3 and "2 configuration(s) rehashed, 1 merged" in lines[0] and "1 duplicate" in lines[0]
    assert "migrated to schema 3" in lines[1] and "migrated to schema 4" in lines[2]  # then the next steps, in order

    new = MethodInfo("styleexpert", "1", base).config_hash
    assert set(methods) == {("styleexpert", new), ("reinhard", other.config_hash)}
    info = methods[("styleexpert", new)]
    assert info["params"] == base and info["licence"] == "lic" and info["deterministic"] is False
    assert info["provenance"] == {"checkpoint": "/b/styleexpert", "reproduce": REPRODUCE}  # the newest clone's
    se = samples[samples.method == "styleexpert"]
    assert sorted(se.index) == ["p1", "p2", "p3"] and set(se.method_config) == {new}
    assert all(se.loc[p, "sample_key"] == _key(new, p) for p in se.index)
    assert se.loc["p2", "run_id"] == "B"
    # the PNGs stay where they were written: paths under the old keys
    assert se.loc["p1", "output_path"] == f"images/styleexpert/{_key(old_a, 'p1')}.png"
    assert se.loc["p2", "output_path"] == f"images/styleexpert/{_key(old_b, 'p2')}.png"
    assert samples[samples.method == "reinhard"].sample_key.tolist() == [_key(other.config_hash, "p1")]
    got = dict(zip(values[values.method == "styleexpert"].pair_id, values[values.method == "styleexpert"].value))
    assert got == {"p1": 0.1, "p2": 0.9, "p3": 0.3}
    assert set(values.sample_key) <= set(samples.sample_key)
    assert len(routing) == 6 and set(routing.sample_key) == {_key(new, p) for p in ("p1", "p2", "p3")}
    assert sets[["method_config", "value"]].values.tolist() == [[new, 7.5]]  # the kept clone's; recomputed later
    assert meta["migrated_provenance"] == "2" and meta["schema_version"] == str(SCHEMA_VERSION) == "4"
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        for table in ("metric_values", "routing"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table} WHERE sample_key NOT IN "
                                "(SELECT sample_key FROM samples)").fetchone() == (0,), table

    caplog.clear()
    with Store(tmp_path) as st:  # nothing left to migrate: unchanged, silent
        assert st.methods() == methods and len(st.samples()) == 4
    assert not [r for r in caplog.records if r.name == "sxbench.store"]

    html = render(tmp_path).read_text()
    assert REPRODUCE in html and "checkpoint: /b/styleexpert" in html


def test_method_card_reads_provenance_and_legacy_params():
    from sxbench.report import _method_cards

    new = {"name": "adain", "version": "1", "params": {"alpha": 1.0, "weights_sha256": "ab" * 32},
           "provenance": {"checkpoint": "/x/adain", "reproduce": "sxbench train adain"}}
    legacy = {"name": "styleexpert", "version": "1",
              "params": {"steps": 4, "weights_sha256": "cd" * 32, "checkpoint": "/y/se", "reproduce": REPRODUCE}}
    cards = _method_cards({("adain", "c1"): new, ("styleexpert", "c2"): legacy}, [], {},
                          {("adain", "c1"): "adain", ("styleexpert", "c2"): "styleexpert"})
    by = {c["name"]: c for c in cards}
    assert (by["adain"]["reproduce"], by["adain"]["checkpoint"]) == ("sxbench train adain", "/x/adain")
    assert (by["styleexpert"]["reproduce"], by["styleexpert"]["checkpoint"]) == (REPRODUCE, "/y/se")
    assert by["adain"]["params"] == {"alpha": 1.0} and by["styleexpert"]["params"] == {"steps": 4}
    assert by["styleexpert"]["checksums"] == {"weights_sha256": "cd" * 8}


def test_rows_that_may_need_their_path_are_never_rehashed(tmp_path):
    """Schema 1: an import (its params are a pixel digest) and a method without a weights sha256 (its path may be
    all that tells two models apart) are left alone. Schema 2: nothing is rehashed, so a plugin that does keep a
    ``checkpoint`` parameter finds its outputs again on every open."""
    from sxbench.records import IMPORTED_VERSION, ImportedMethodInfo

    imported = ImportedMethodInfo("uso", IMPORTED_VERSION, {"digest": "d", "checkpoint": "x"},
                                  provenance={"source": "/s"})
    no_digest = MethodInfo("plugin", "1", {"checkpoint": "/models/a"})
    with Store(tmp_path / "v1") as st:
        for info in (imported, no_digest):
            st.register_method(info)
        st.conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(tmp_path / "v1") as st:
        assert st.methods() == {("uso", imported.config_hash): imported.to_dict(),
                                ("plugin", no_digest.config_hash): no_digest.to_dict()}
        assert st._schema_version() == SCHEMA_VERSION

    keeps_path = MethodInfo("plugin", "1", {"checkpoint": "/models/a", "weights_sha256": "ab" * 32})
    with Store(tmp_path / "v2") as st:
        st.register_method(keeps_path)
        st.write_sample(_sample(_key(keeps_path.config_hash, "p1"), keeps_path.config_hash, "p1", "A", "plugin"))
    with Store(tmp_path / "v2") as st:
        assert list(st.methods()) == [("plugin", keeps_path.config_hash)]
        assert st.sample_status([_key(keeps_path.config_hash, "p1")]) == {_key(keeps_path.config_hash, "p1"): "ok"}
