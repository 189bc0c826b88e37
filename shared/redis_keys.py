"""The Redis key layout: every key streamrec writes (the scorer) and reads (the clients, the API).

The values of the list keys are :class:`~streamrec.shared.cached_list.CachedList` encodings
(shared/cached_list.py). ``docs/architecture.md`` ("Contract 3: Redis key layout") documents the
same layout for people; change both together.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Names of every Redis key streamrec uses, under one configurable prefix.

    - ``{prefix}:recs:{user_id}``  STRING, an encoded :class:`CachedList`: the user's top-N.
    - ``{prefix}:popular``        STRING, an encoded :class:`CachedList`: fallback for cold users.
    - ``{prefix}:model``          STRING, the model version the scorer currently serves.
    - ``{prefix}:similar:{item_id}`` STRING, an encoded :class:`CachedList`: the item's nearest items
      (source "personal": the served model's item embeddings, with its version; "fallback": items
      that co-occur with it in recent histories, for an item the model does not know). Written by
      the scorer (services/scorer/similar_items.py), overwritten in place on a model swap, no TTL.
    - ``{prefix}:similar-model``  STRING, the model version whose similar lists are all written.
    - ``{prefix}:popular:{category}`` STRING, an encoded :class:`CachedList`: the category's
      popular items (fills a read filtered by categories).
    - ``{prefix}:catalog``        STRING, the serving catalog (``ServingCatalog.encode``,
      shared/catalog.py): availability and categories of every item that has either.
    - ``{prefix}:catalog:version:{{prefix}:catalog}`` STRING, the catalog topic offset ``catalog``
      holds: readers re-read ``catalog`` when it changes. Its hash tag (``{…}``, the catalog's
      name) puts it in the slot of ``{prefix}:catalog`` on a Redis Cluster, so the scorer's pipeline
      writes both on one node, in order: a reader never sees the new version before the new
      catalog. It starts with ``{prefix}:`` like every key, so ACL key patterns such as
      ``~streamrec:*`` cover it.
    - ``{prefix}:catalog:version`` the same value under the name streamrec used before the hash
      tag, still written for readers of earlier versions (:attr:`legacy_catalog_version`).

    Per-user and per-item keys have no hash tag, so they spread over every slot of a cluster
    (unless an id itself contains ``{…}``: Redis then hashes only what is inside the braces).
    """

    prefix: str = "streamrec"

    def recs(self, user_id: str) -> str:
        """Key of one user's cached recommendations."""
        return f"{self.prefix}:recs:{user_id}"

    @property
    def popular(self) -> str:
        """Key of the popular-items fallback list."""
        return f"{self.prefix}:popular"

    @property
    def model(self) -> str:
        """Key holding the served model version."""
        return f"{self.prefix}:model"

    def similar(self, item_id: str) -> str:
        """Key of one item's similar items."""
        return f"{self.prefix}:similar:{item_id}"

    @property
    def similar_model(self) -> str:
        """Key holding the model version whose similar lists are completely written."""
        return f"{self.prefix}:similar-model"

    def popular_in(self, category: str) -> str:
        """Key of one category's popular items."""
        return f"{self.prefix}:popular:{category}"

    @property
    def catalog(self) -> str:
        """Key of the serving catalog."""
        return f"{self.prefix}:catalog"

    @property
    def catalog_version(self) -> str:
        """Key of the serving catalog's version (the catalog topic offset it holds): hash-tagged
        into the slot of :attr:`catalog`, under the prefix every key has."""
        return f"{self.prefix}:catalog:version:{{{self.catalog}}}"

    @property
    def legacy_catalog_version(self) -> str:
        """The catalog version's key before the hash tag: written too, for earlier readers;
        read when :attr:`catalog_version` is missing (a scorer of an earlier version)."""
        return f"{self.prefix}:catalog:version"
