"""How the ingest profile attributes py-spy samples to parts of the pipeline (bench/ingest_profile.py)."""

from __future__ import annotations

from bench.ingest_profile import OTHER, attribute


def test_a_sample_counts_for_the_first_part_its_stack_passes_through() -> None:
    raw = "\n".join(
        [
            # a table write inside the agent's fold_run is the agent's time, not the tables'
            "run (ingest/app.py:341);fold_run (ingest/app.py:213);Table.on_key_set (faust/tables/table.py:85) 7",
            "Thread._bootstrap (threading.py:1002);WorkerThread.run (mode/threads.py:62) 3",
            "BaseEventLoop._run_once (asyncio/base_events.py:1884);EpollSelector.select (selectors.py:468) 2",
            "Handle._run (asyncio/events.py:80) 1",
            "",
            "a line without a count",
        ]
    )
    samples = attribute(raw)
    assert sum(samples.values()) == 13
    assert samples[OTHER] == 1
    assert [count for part, count in samples.items() if "build_features" in part] == [7]
    assert [count for part, count in samples.items() if "fetch thread" in part] == [3]
    assert [count for part, count in samples.items() if "select" in part] == [2]
