"""Users' recommendation lists in Redis (``RedisKeys.recs``): written, deleted, and read back to
know which are from the served model."""

from __future__ import annotations

from streamrec.scorer.metrics import LISTS_WRITTEN, ScorerCounts
from streamrec.scorer.redis_writer import RedisWriter
from streamrec.scorer.scoring import ScoredLists
from streamrec.shared.cached_list import CachedList, CachedListDecodeError
from streamrec.shared.logs import get_logger
from streamrec.shared.redis_keys import RedisKeys

log = get_logger(__name__)


class UserLists:
    """The ``recs`` keys of users, through the scorer's :class:`RedisWriter`."""

    def __init__(self, writer: RedisWriter, keys: RedisKeys, ttl: int | None, counts: ScorerCounts) -> None:
        self.writer = writer
        self.keys = keys
        self.ttl = ttl  # seconds (STREAMREC_RECS_TTL_SECONDS), None to keep
        self.counts = counts

    def write(self, scored: ScoredLists, trigger: str) -> None:
        """SET every user's list in one pipeline, retrying until it succeeds (or Stopped).
        ``trigger`` (event, rescore) labels the metric."""
        if not scored.values:
            return
        values = {self.keys.recs(user): value for user, value in scored.values.items()}
        self.writer.set_many(f"write {len(values)} recommendation lists", values, ttl=self.ttl)
        for source, count in (("personal", scored.personal), ("fallback", scored.fallback)):
            if count:
                LISTS_WRITTEN.labels(source, trigger).inc(count)

    def delete(self, users: list[str]) -> None:
        """DEL erased users' lists, retrying until it succeeds (or Stopped)."""
        keys = [self.keys.recs(user) for user in users]
        self.writer.delete(f"delete {len(keys)} erased users' lists", keys)
        self.counts.erased += len(keys)
        log.info("erased users' lists deleted", extra={"users": len(keys)})

    def from_model(self, users: list[str], version: str) -> list[str]:
        """The users among ``users`` whose list in Redis is from model ``version``."""
        if not users:
            return []
        raw_lists = self.writer.get_many(
            "read recalled users' lists", [self.keys.recs(user) for user in users]
        )
        current = []
        for user, raw in zip(users, raw_lists, strict=True):
            try:
                if raw is not None and CachedList.decode(raw).model_version == version:
                    current.append(user)
            except CachedListDecodeError:
                pass  # unreadable: re-score it
        return current
