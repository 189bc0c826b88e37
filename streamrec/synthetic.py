"""A synthetic interaction stream with structure a model can learn, for demos and load tests.

Items are split into ``clusters`` ("tastes"); inside a cluster they form a chain (think episodes
of a series). Each user has a favourite cluster; their next item is usually the next one along
the chain from their last item, sometimes a popular item of their cluster, rarely anything.
So both "what this user likes" and "what comes next" are learnable. Never use it as evidence of
model quality: that is what the MovieLens evaluation is for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamrec.shared.datasets import COLUMNS

EVENT_TYPES = np.array(["view", "click", "add_to_cart", "purchase"])
EVENT_TYPE_P = np.array([0.6, 0.25, 0.1, 0.05])


def generate(
    users: int = 500,
    items: int = 400,
    clusters: int = 8,
    events_per_user: tuple[int, int] = (10, 40),
    seed: int = 7,
    start_time: float = 1_700_000_000.0,
    user_prefix: str = "u",
    item_prefix: str = "i",
) -> pd.DataFrame:
    """Interactions in the same frame layout as ``streamrec.shared.datasets`` (time-ordered rows)."""
    rng = np.random.default_rng(seed)
    cluster_items = [np.arange(c, items, clusters) for c in range(clusters)]
    # Zipf-like popularity inside each cluster.
    cluster_p = [1.0 / np.arange(1, len(c) + 1) ** 0.8 for c in cluster_items]
    cluster_p = [p / p.sum() for p in cluster_p]

    rows: list[tuple[str, str, float, str]] = []
    for user in range(users):
        favourite = int(rng.integers(clusters))
        chain = cluster_items[favourite]
        length = int(rng.integers(events_per_user[0], events_per_user[1] + 1))
        position = int(rng.choice(len(chain), p=cluster_p[favourite]))
        clock = start_time + float(rng.uniform(0, 86_400))
        seen: set[int] = set()
        for _ in range(length):
            roll = rng.random()
            if roll < 0.7:
                position = (position + 1) % len(chain)
                item = int(chain[position])
            elif roll < 0.9:
                position = int(rng.choice(len(chain), p=cluster_p[favourite]))
                item = int(chain[position])
            else:
                item = int(rng.integers(items))
            if item in seen:
                continue
            seen.add(item)
            clock += float(rng.exponential(600.0))
            event_type = str(rng.choice(EVENT_TYPES, p=EVENT_TYPE_P))
            rows.append((f"{user_prefix}{user}", f"{item_prefix}{item}", round(clock, 3), event_type))

    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    frame = frame.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    frame["value"] = np.nan
    frame["row"] = np.arange(len(frame))
    return frame[COLUMNS]
