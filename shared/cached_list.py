"""The list codec: a ranked list as stored in Redis (:class:`CachedList`), its binary format and the
JSON one before it, and the scorer's bulk encoder (:class:`RankedListEncoder`).

The keys holding these values are in shared/redis_keys.py. ``docs/architecture.md`` ("Contract 3:
Redis key layout") documents the same format for people; change both together.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

Source = Literal["personal", "fallback"]  # of a stored list; a read may also be "mixed"
ValueFormat = Literal["binary", "json"]


class CachedListDecodeError(ValueError):
    """A Redis value is not a :class:`CachedList` in any format this version reads (says why)."""


# The binary format of a cached list, version 1 (little-endian).
#
# Why this shape: a user costs Redis its value plus ~70 bytes of per-key overhead, with the value's
# allocation rounded up to a size class (256, 320, 384, 448 … bytes). The old JSON top-50 took
# ~1 KB; for 500 bytes per user the value must stay under ~378 bytes, and the 20,000-item
# catalogue of the memory benchmark fits a top-50 into 251 bytes (the 256-byte class). Reading
# stays as fast as the JSON it replaces: header, ids and scores are one struct.unpack.
#
#   header  B  tag 0x01 (a JSON value starts with "{": the first byte tells the formats apart;
#              a later version of this layout takes the next tag)
#           B  flags: bit 0 the source is "fallback", bit 1 a model version is stored
#           B  id width: 1, 2, 4 or 8 = every id is one prefix + a canonical decimal integer
#              ("42", "i12345", "sku-9"), stored as fixed-width unsigned ints; 0 = ids as text
#           H  count of items
#           B  model version length, B id prefix length (UTF-8 bytes)
#           d  generated_at (epoch s, float64: exact)
#           f  lowest score, f highest score (float32: the precision of the model's output)
#   body    count ids of `width` bytes (width > 0), then count uint16 scores
#   text    model version, then the id prefix (width > 0) or every id joined by "\n" (width 0)
#
# Ids: fixed width rather than varints, so decoding needs no Python loop per byte; the prefix is
# the first id's without its trailing digits, and an id that does not fit the pattern (leading
# zeros, non-ASCII digits, another prefix) makes the list use text. "\n" can separate text ids
# because normalised ids never contain it (shared/events.py: normalise_id).
# Scores: 65,535 steps between the list's own lowest and highest score. Rounding is monotonic, so
# the order is kept (scores closer than a step may come back equal); the absolute error is at most
# (highest - lowest) / 131,070 plus the float32 rounding of the two ends, whatever the magnitude:
# ~4e-5 for logits spread over 10. float16 needs no range but keeps ~3 significant digits (a
# top-50's close logits would tie) and overflows above 65,504 (popularity counts can).
_BINARY_V1 = 0x01
_HEADER = "<BBBHBBdff"
_HEADER_FIELDS = 9
_FLAG_FALLBACK = 0x01
_FLAG_VERSION = 0x02
_ID_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}  # id width in bytes -> struct code
_ID_SEPARATOR = "\n"
SCORE_STEPS = 0xFFFF  # a binary list's scores: this many steps between its lowest and highest
_MAX_TEXT = 0xFF


@dataclass(frozen=True, slots=True)
class CachedList:
    """A ranked list as stored in Redis: items (best first) with scores, and where they came from.

    :meth:`encode` writes the compact binary format (version 1, laid out above); :meth:`decode`
    reads it and the JSON format written before it, which stays readable so that lists written by
    an older scorer are served until they are rewritten. The JSON format (:meth:`to_json`)::

        {"v": "<model version or null>", "t": <generated_at epoch s>, "src": "personal",
         "items": [["<item_id>", <score>], ...]}   # best first
    """

    items: list[tuple[str, float]]
    model_version: str | None
    generated_at: float
    source: Source

    def encode(self, value_format: ValueFormat = "binary") -> bytes:
        """The Redis value: binary (compact), or the JSON for readers that predate the binary format.

        Raises ValueError for what the binary format cannot hold: non-finite scores or beyond
        float32, more than 65,535 items, a model version over 255 bytes, an id with a newline.
        """
        if value_format == "json":
            return self.to_json()
        count = len(self.items)
        scores = [float(score) for _, score in self.items]
        if not all(map(math.isfinite, scores)):
            raise ValueError("cached list scores must be finite")
        low, high = (_float32(min(scores)), _float32(max(scores))) if scores else (0.0, 0.0)
        step = (high - low) / SCORE_STEPS
        # Clamped: the float32 ends may round to just inside the list's range.
        quantised = [min(SCORE_STEPS, max(0, round((s - low) / step))) if step else 0 for s in scores]
        version = b"" if self.model_version is None else self.model_version.encode()
        if len(version) > _MAX_TEXT:
            raise ValueError(f"model version of {len(version)} bytes: a cached list holds {_MAX_TEXT}")
        flags = (_FLAG_FALLBACK if self.source == "fallback" else 0) | (
            _FLAG_VERSION if self.model_version is not None else 0
        )

        integer = _integer_ids([item for item, _ in self.items])
        if integer is not None:
            prefix, numbers = integer
            largest = max(numbers, default=0)
            width = _id_width(largest)
            if width:
                head = (_BINARY_V1, flags, width, count, len(version), len(prefix))
                body = _layout(count, width).pack(*head, self.generated_at, low, high, *numbers, *quantised)
                return body + version + prefix
        ids = _ID_SEPARATOR.join(item for item, _ in self.items)
        if ids.count(_ID_SEPARATOR) != max(0, count - 1):
            raise ValueError("an item id contains a newline: not a valid id")
        head = (_BINARY_V1, flags, 0, count, len(version), 0)
        return (
            _layout(count, 0).pack(*head, self.generated_at, low, high, *quantised) + version + ids.encode()
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> CachedList:
        """Read a Redis value in either format (binary, or the JSON written before it).

        Raises :class:`CachedListDecodeError` (a ValueError) for anything else, truncated values
        included. Read the value as bytes: a binary value does not survive redis-py's
        ``decode_responses=True``.
        """
        if isinstance(raw, str):
            if raw.lstrip()[:1] != "{":
                raise CachedListDecodeError(
                    "a binary cached list was read as text: read it as bytes (redis-py decode_responses=False)"
                )
            return cls._from_json(raw)
        if raw[:1] == b"\x01":
            try:
                return cls._from_binary(raw)
            except (struct.error, UnicodeDecodeError, IndexError) as exc:
                raise CachedListDecodeError(
                    f"corrupt or truncated cached list ({len(raw)} bytes): {exc}"
                ) from None
        if raw.lstrip()[:1] == b"{":
            return cls._from_json(raw)
        raise CachedListDecodeError(f"not a cached list: starts with {raw[:8]!r}, expected 0x01 or '{{'")

    @classmethod
    def _from_binary(cls, raw: bytes) -> CachedList:
        width, count = raw[2], raw[3] | raw[4] << 8
        layout = _LAYOUTS.get((count, width)) or _layout(count, width)
        values = layout.unpack_from(raw)
        _, flags, _, _, version_length, prefix_length, generated_at, low, high = values[:_HEADER_FIELDS]
        pos = layout.size
        version = raw[pos : pos + version_length].decode() if flags & _FLAG_VERSION else None
        pos += version_length
        if width:
            if pos + prefix_length != len(raw):
                raise CachedListDecodeError(f"{len(raw)} bytes, expected {pos + prefix_length}")
            numbers = values[_HEADER_FIELDS : _HEADER_FIELDS + count]
            prefix = raw[pos:].decode()
            try:  # the id strings seen before: no int-to-str per item (see _ID_STRINGS)
                ids = list(map(_ID_STRINGS[prefix].__getitem__, numbers))
            except KeyError:
                ids = _id_strings(prefix, numbers)
            quantised = values[_HEADER_FIELDS + count :]
        else:
            if prefix_length or pos > len(raw):
                raise CachedListDecodeError(f"{len(raw)} bytes do not hold the header's text fields")
            ids = raw[pos:].decode().split(_ID_SEPARATOR) if count else []
            if len(ids) != count:
                raise CachedListDecodeError(f"{len(ids)} item ids for {count} scores")
            quantised = values[_HEADER_FIELDS:]
        step = (high - low) / SCORE_STEPS
        return cls(
            items=[(item, low + q * step) for item, q in zip(ids, quantised, strict=True)],
            model_version=version,
            generated_at=generated_at,
            source="fallback" if flags & _FLAG_FALLBACK else "personal",
        )

    def to_json(self) -> bytes:
        """The JSON format (what :meth:`encode` writes with ``"json"``)."""
        return orjson.dumps(
            {
                "v": self.model_version,
                "t": round(self.generated_at, 3),
                "src": self.source,
                "items": [[item, round(score, 6)] for item, score in self.items],
            }
        )

    @classmethod
    def _from_json(cls, raw: bytes | str) -> CachedList:
        try:
            data = orjson.loads(raw)
            return cls(
                items=[(str(i), float(s)) for i, s in data["items"]],
                model_version=data["v"],
                generated_at=data["t"],
                source=data["src"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CachedListDecodeError(f"corrupt JSON cached list: {exc!r}") from None

    def to_response(self, user_id: str, n: int | None = None) -> dict[str, Any]:
        """The public JSON shape (``streamrec recommend --json``, HTTP API)."""
        items = self.items if n is None else self.items[:n]
        return {
            "user_id": user_id,
            "items": [{"item_id": item, "score": score} for item, score in items],
            "model_version": self.model_version,
            "generated_at": self.generated_at,
            "source": self.source,
        }


def _integer_ids(ids: list[str]) -> tuple[bytes, list[int]] | None:
    """(UTF-8 prefix, numbers) if every id is one prefix + a canonical decimal integer, else None."""
    if not ids:
        return b"", []
    prefix = ids[0].rstrip("0123456789")
    start = len(prefix)
    numbers = []
    for item in ids:
        digits = item[start:]
        # ASCII digits without a leading zero only: "007" and "٣" must come back as written.
        if not (digits.isascii() and digits.isdigit() and item.startswith(prefix)) or (
            digits[0] == "0" and len(digits) > 1
        ):
            return None
        numbers.append(int(digits))
    encoded = prefix.encode()
    return (encoded, numbers) if len(encoded) <= _MAX_TEXT else None


class RankedListEncoder:
    """Redis values for rows of a model's output, in bulk: what :meth:`CachedList.encode` writes for
    ``CachedList(row, model_version, generated_at, "personal")``, byte for byte, at a fraction of
    its cost (the scorer encodes a list per scored user; item by item, that cost more than the
    inference).

    Built once per model from its vocabulary: when every id is one prefix + a canonical integer
    (MovieLens' "1".."193609", "i42"), the numbers are parsed here once and a row is encoded with
    numpy; otherwise each row goes through :meth:`CachedList.encode`.
    """

    def __init__(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary
        integer = _integer_ids(vocabulary)
        if integer is not None and max(integer[1], default=0) >= 1 << 64:
            integer = None  # numbers beyond 8 bytes: the binary format keeps such ids as text
        self._prefix = integer[0] if integer else b""
        # Index i (1-based, as the model's items) -> the id's number; 0 is padding.
        self._numbers = np.array([0, *integer[1]], dtype=np.uint64) if integer else None

    def encode(
        self, items: np.ndarray, scores: np.ndarray, model_version: str, generated_at: float
    ) -> list[bytes]:
        """One binary value per row of ``items`` (int64 item indices, 1-based) and ``scores`` [B, k].

        Entries with a non-finite score or an index outside the vocabulary (the graph's masked
        tail) are left out, as the scorer drops them."""
        version = model_version.encode()
        if len(version) > _MAX_TEXT:
            raise ValueError(f"model version of {len(version)} bytes: a cached list holds {_MAX_TEXT}")
        valid = np.isfinite(scores) & (items >= 1) & (items <= len(self.vocabulary))
        complete = valid.all(axis=1)
        values: list[bytes] = [b""] * len(items)
        # Rows the numpy path can take; the others (a masked tail, text ids) go through CachedList.
        fast = complete if self._numbers is not None and items.shape[1] else np.zeros(len(items), dtype=bool)
        whole = np.flatnonzero(fast)
        if len(whole):
            # The common case, rows without a masked tail: every step on the whole batch at once.
            ids, row_scores = self._numbers[items[whole]], scores[whole].astype(np.float64)
            # float32 ends, then the same float64 arithmetic as CachedList.encode (rint rounds half to even).
            low = row_scores.min(axis=1).astype(np.float32).astype(np.float64)
            high = row_scores.max(axis=1).astype(np.float32).astype(np.float64)
            step = (high - low) / SCORE_STEPS
            safe_step = np.where(step > 0, step, 1.0)[:, None]
            quantised = np.clip(np.rint((row_scores - low[:, None]) / safe_step), 0, SCORE_STEPS)
            quantised = np.where(step[:, None] > 0, quantised, 0).astype("<u2")
            largest = ids.max(axis=1)
            for n, row in enumerate(whole.tolist()):
                width = _id_width(int(largest[n]))  # never 0: numbers of 8 bytes or more have no _numbers
                head = struct.pack(
                    _HEADER, _BINARY_V1, _FLAG_VERSION, width, items.shape[1], len(version), len(self._prefix),
                    generated_at, low[n], high[n],
                )  # fmt: skip
                body = (ids[n].astype(f"<u{width}").tobytes(), quantised[n].tobytes(), version, self._prefix)
                values[row] = head + b"".join(body)
        for row in np.flatnonzero(~fast).tolist():
            keep = valid[row]
            values[row] = self._encode_as_text(
                items[row][keep], scores[row][keep], model_version, generated_at
            )
        return values

    def _encode_as_text(
        self, items: np.ndarray, scores: np.ndarray, model_version: str, generated_at: float
    ) -> bytes:
        vocabulary = self.vocabulary
        ranked = [
            (vocabulary[index - 1], score)
            for index, score in zip(items.tolist(), scores.tolist(), strict=True)
        ]
        return CachedList(ranked, model_version, generated_at, "personal").encode()


def _id_width(largest: int) -> int:
    """Bytes per id (1, 2, 4 or 8) that hold numbers up to ``largest``; 0 if 8 do not."""
    return next((width for width in _ID_CODES if largest < 1 << (8 * width)), 0)


_LAYOUTS: dict[tuple[int, int], struct.Struct] = {}


def _layout(count: int, width: int) -> struct.Struct:
    """Header and body of a list of ``count`` items with ids of ``width`` bytes (0: ids as text)."""
    layout = _LAYOUTS.get((count, width))
    if layout is None:
        if width and width not in _ID_CODES:
            raise CachedListDecodeError(f"unknown id width {width}")
        if len(_LAYOUTS) >= 1024:  # list lengths vary little; bounded all the same
            _LAYOUTS.clear()
        ids = f"{count}{_ID_CODES[width]}" if width else ""
        layout = _LAYOUTS[(count, width)] = struct.Struct(f"{_HEADER}{ids}{count}H")
    return layout


# Item id strings by prefix and number, shared by every decode in this process: making strings of
# the numbers was most of a decode's time, and a catalogue's ids recur in every user's list.
# Bounded (cleared when full): a reader's memory does not grow with the catalogue beyond it.
_ID_STRINGS: dict[str, dict[int, str]] = {}
_ID_STRINGS_MAX = 1 << 18  # ids per prefix, ~30 MB at most
_ID_PREFIXES_MAX = 64


def _id_strings(prefix: str, numbers: tuple[int, ...]) -> list[str]:
    """``prefix + str(number)`` for each number, remembered in the cache (the slow path of a decode)."""
    names = _ID_STRINGS.get(prefix)
    if names is None:
        if len(_ID_STRINGS) >= _ID_PREFIXES_MAX:
            _ID_STRINGS.clear()
        names = _ID_STRINGS[prefix] = {}
    elif len(names) >= _ID_STRINGS_MAX:
        names.clear()
    ids = [prefix + str(number) for number in numbers]
    names.update(zip(numbers, ids, strict=True))
    return ids


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (what the header stores)."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        raise ValueError(f"score {value} is beyond float32") from None
