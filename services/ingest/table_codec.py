"""The bytes of the tables' keys and values: Faust's ``json`` codec with exact-size output, and
:class:`TableBytes`, the same bytes without Faust's serializer registry (``changelog_writer.py``).

orjson (which Faust's json codec uses when installed) returns a bytes object that keeps the 4 KiB
buffer it wrote into, whatever the length of the JSON: a 10-byte key costs 4 KiB. A table write's
key and value wait in Faust's producer buffer until they are sent, and at a full-speed replay
ingest held about 17,000 of them at once, 130 MiB that the allocator then kept (figure 6). This
codec writes the same JSON and copies it into a bytes object of its own length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from faust.serializers import codecs
from faust.utils import json as faust_json


class ExactSizeJson(codecs.json):
    """Faust's json codec; the same bytes, in an allocation of their own size."""

    def _dumps(self, s: Any) -> bytes:
        return memoryview(super()._dumps(s)).tobytes()


def use_exact_size_json() -> None:
    """Make ``json`` (the serializer of every table with str keys and dict values) exact-size."""
    codecs.register("json", ExactSizeJson())


PROBE_KEYS = ("u1", "user é/ü 42", "\x00pending-popularity:3")
PROBE_VALUE = {"history": [["i1", 1.5, "view"]], "event_count": 3, "none": None, "é": ["ü", -2, 0.1]}


def _json(value: Any) -> bytes:
    """ExactSizeJson's bytes: Faust's JSON dump (orjson, Faust's options), copied out of orjson's buffer."""
    return memoryview(faust_json.dumps(value)).tobytes()


@dataclass(frozen=True)
class TableBytes:
    """How one table's keys and values become the bytes its store and its changelog hold."""

    encode_key: Callable[[str], bytes]
    encode_value: Callable[[Any], bytes]
    decode_value: Callable[[bytes], Any]
    direct: bool  # True: orjson's calls; False: Faust's registry

    @classmethod
    def of(cls, store: Any) -> TableBytes:
        """Faust's bytes for ``store`` (a table's), computed directly (keys and values dumped as
        Faust's ``json`` codec dumps them) when that gives the same bytes on probes, else through
        Faust's serializer registry, which costs several calls and a registry lookup per key and value.

        The direct decoding is orjson's: Faust's differs only for a mapping with a ``__faust`` key
        (a Faust model), which no value of ingest's tables holds."""
        direct = cls(_json, _json, orjson.loads, direct=True)
        encoded = direct.encode_value(PROBE_VALUE)
        if (
            all(store._encode_key(key) == direct.encode_key(key) for key in PROBE_KEYS)
            and store._encode_value(PROBE_VALUE) == encoded
            and store._decode_value(encoded) == direct.decode_value(encoded) == PROBE_VALUE
        ):
            return direct
        return cls(store._encode_key, store._encode_value, store._decode_value, direct=False)
