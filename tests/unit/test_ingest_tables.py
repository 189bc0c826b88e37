"""ingest's tables open RocksDB with the memory budget of STREAMREC_INGEST_TABLE_MEMORY_MB."""

from __future__ import annotations

from pathlib import Path

from streamrec.ingest.app import create_app
from streamrec.shared.settings import Settings


def test_every_table_partition_gets_the_configured_memory_budget(tmp_path: Path) -> None:
    # Building the app and its stores opens nothing: no broker is contacted, no database created.
    app = create_app(Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path, ingest_table_memory_mb=8))
    app.finalize()
    budgets = {}
    for name, table in app.tables.items():
        options = table.data.rocksdb_options
        budgets[name] = (
            options.block_cache_size,
            options.write_buffer_size * options.max_write_buffer_number,
        )
    mib = 1024 * 1024
    # The erasure markers are few and small: they take the smallest budget whatever the setting.
    # An eighth of the budget to the block cache, a quarter to each of two write buffers.
    assert budgets.pop("erasure_markers") == (mib // 2, 2 * mib)
    assert budgets == {name: (mib, 4 * mib) for name in ("user_state", "item_popularity", "item_catalog")}


def test_table_records_are_faust_json_in_allocations_of_their_own_size(tmp_path: Path) -> None:
    import tracemalloc

    from faust.serializers import codecs

    create_app(Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path))  # installs the codec
    value = {"history": ["i1", "é"], "event_count": 2, "score": 0.5}
    assert codecs.dumps("json", value) == codecs.json().dumps(value)  # the same bytes as Faust's own
    assert codecs.loads("json", codecs.dumps("json", value)) == value

    tracemalloc.start()
    try:
        keys = [codecs.dumps("json", f"u{n}") for n in range(1_000)]
        per_key = tracemalloc.get_traced_memory()[0] / len(keys)
    finally:
        tracemalloc.stop()
    assert per_key < 200  # orjson's own output keeps 4 KiB each
