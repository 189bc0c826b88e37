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
    assert budgets.pop("erasure_markers") == (2 * mib, 2 * mib)
    assert budgets == {name: (4 * mib, 4 * mib) for name in ("user_state", "item_popularity", "item_catalog")}
