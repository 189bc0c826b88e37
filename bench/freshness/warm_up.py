"""The freshness stack's warm-up: every user gets a history, one model is trained and served, and every
user's list comes from it before anything is measured."""

from __future__ import annotations

from bench.freshness.sizes import TRAIN_EPOCHS, Size
from bench.harness import log_progress
from bench.stack import feed, read_lists, train_and_serve, wait_until
from streamrec.shared.registry import ModelRegistry
from streamrec.stack import Stack
from streamrec.synthetic import generate


def warm_up(stack: Stack, size: Size) -> tuple[list[str], list[str], str]:
    """Give every user a history, train and serve one model, wait until every list is from it.
    Returns the users, the items the model knows and its version."""
    settings = stack.settings
    events = generate(users=size.users, items=max(200, size.users // 5), events_per_user=(3, 8), seed=11)
    users = sorted(events.user_id.unique())
    log_progress(f"  warm-up: {len(events):,} events over {len(users):,} users")
    feed(stack, events, "warm-up", timeout=120 + len(events) / 100)
    version = train_and_serve(stack, TRAIN_EPOCHS, "freshness benchmark")

    def served() -> int:
        return sum(1 for c in read_lists(settings, users).values() if c.model_version == version)

    # Every user's list from this model also means the scorer's re-scoring after the swap is over.
    wait_until(
        stack,
        lambda: served() == len(users),
        "lists from the model",
        120 + len(users) / 100,
        lambda: f"{served():,}/{len(users):,}",
    )
    items = ModelRegistry(settings.model_dir).vocabulary(version)  # type: ignore[arg-type]
    return users, items, version
