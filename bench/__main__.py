"""``python -m bench``: run the benchmarks and write the results page (docs/benchmarks.md).

python -m bench                     # every benchmark, full size
python -m bench --quick             # small sizes, one pass: checks the suite runs (CI); no page
python -m bench --only scoring      # one benchmark
BENCH_BROKER=kafka3 python -m bench --only freshness   # on three Apache Kafka brokers (bench/brokers.py)
python -m bench --only freshness_redis_cluster        # figure 2 with the lists on a Redis Cluster
"""

from __future__ import annotations

import argparse
import sys

from bench import (
    broker,
    capacity,
    catalog,
    freshness,
    ingest,
    ingest_profile,
    memory,
    read_path,
    scoring,
    sessions,
    training,
)
from bench.brokers import chosen, fragment_names
from bench.freshness import on_redis_cluster
from bench.harness import FRAGMENTS, PAGE, render_page, render_section, write

BENCHMARKS = {
    "ingest": ingest.run,
    "ingest_profile": ingest_profile.run,
    "freshness": freshness.run,
    "freshness_redis_cluster": on_redis_cluster.run,
    "capacity": capacity.run,
    "read_path": read_path.run,
    "catalog": catalog.run,
    "scoring": scoring.run,
    "training": training.run,
    "memory": memory.run,
    "broker": broker.run,
    "sessions": sessions.run,
}
# Benchmarks that run on the broker BENCH_BROKER chooses: each broker's fragment is a file of its own.
ON_CHOSEN_BROKER = ("freshness", "freshness_redis_cluster", "ingest", "capacity", "memory")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; write the page unless --quick (then print it)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; print instead of writing the page")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args(argv)

    for name in args.only or BENCHMARKS:
        print(f"running {name}…", file=sys.stderr, flush=True)
        fragment = "\n".join(render_section(section) for section in BENCHMARKS[name](args.quick))
        if args.quick:
            print(fragment)
        else:
            stem = chosen().fragment(name) if name in ON_CHOSEN_BROKER else name
            write(FRAGMENTS / f"{stem}.md", fragment)
    if not args.quick:
        stems = [stem for name in BENCHMARKS for stem in fragment_names(name)]
        present = [FRAGMENTS / f"{stem}.md" for stem in stems if (FRAGMENTS / f"{stem}.md").exists()]
        write(PAGE, render_page([path.read_text(encoding="utf-8") for path in present]))
        print(f"wrote {PAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
