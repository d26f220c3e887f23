import pytest

from sxbench.records import MetricValue, SampleRecord
from sxbench.store import Store


def _sample(key, status="ok"):
    return SampleRecord(key, "run", "m", "cfg", "p", "1", "pair", "c", "s", 0, "seen", "color", "f", status,
                        None if status == "ok" else "boom", f"images/m/{key}.png", 0.1, 2, 100, "cpu_rss", "cpu")


def test_sample_and_values_round_trip(tmp_path):
    with Store(tmp_path) as st:
        st.write_sample(_sample("k1"), [MetricValue("k1", "a", 0.5, True, "fidelity", "1", None)])
        st.write_sample(_sample("k2", "error"))
        assert st.sample_status(["k1", "k2", "k3"]) == {"k1": "ok", "k2": "error"}
        assert st.scored_metrics(["k1", "k2"]) == {"k1": {"a"}, "k2": set()}
        df = st.values()
    assert list(df.metric) == ["a"] and df.value.iloc[0] == 0.5 and bool(df.higher_is_better.iloc[0])
    assert (tmp_path / "results.sqlite").is_file()
    with Store(tmp_path) as st:  # reopen: durable, WAL
        assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert len(st.samples()) == 2


def test_failed_transaction_leaves_nothing(tmp_path):
    with Store(tmp_path) as st:
        bad = [MetricValue("k1", "a", 0.5, True, "fidelity", "1", None), object()]
        with pytest.raises(TypeError):  # the second value is not a MetricValue: after the sample's INSERT
            st.write_sample(_sample("k1"), bad)
        assert st.sample_status(["k1"]) == {}
        assert st.values().empty
