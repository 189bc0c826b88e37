"""Readers for interaction files: MovieLens ``ratings.csv`` (ml-latest-small), MovieLens
``u.data`` (ml-100k) and a generic ``user_id,item_id,timestamp[,value][,event_type]`` CSV.

Every reader returns the same frame, one row per interaction, in the file's original row order::

    user_id: str   item_id: str   timestamp: float (epoch s)   value: float (NaN if absent)
    event_type: str   row: int (0-based position of the data row in the file, header excluded)

``replay`` streams it into Kafka, ``evaluate`` splits it; neither copies data into the repo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["user_id", "item_id", "timestamp", "value", "event_type", "row"]


class DatasetError(Exception):
    """A file that cannot be read as interactions; the message says what is wrong."""


def detect_format(path: Path) -> str:
    """'movielens-csv', 'movielens-udata' or 'generic-csv', from the file's first line."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().strip()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    if first.replace(" ", "") == "userId,movieId,rating,timestamp":
        return "movielens-csv"
    if "\t" in first and len(first.split("\t")) == 4:
        return "movielens-udata"
    header = [column.strip() for column in first.split(",")]
    if {"user_id", "item_id"} <= set(header):
        return "generic-csv"
    raise DatasetError(
        f"{path}: unknown format (first line {first[:80]!r}); expected MovieLens ratings.csv, "
        "MovieLens u.data, or a CSV with a header containing user_id,item_id[,timestamp,value,event_type]"
    )


def load_interactions(path: str | Path) -> pd.DataFrame:
    """Read an interaction file in any supported format (see module docstring)."""
    path = Path(path)
    kind = detect_format(path)
    try:
        if kind == "movielens-csv":
            raw = pd.read_csv(path, dtype={"userId": str, "movieId": str})
            frame = pd.DataFrame(
                {
                    "user_id": raw["userId"],
                    "item_id": raw["movieId"],
                    "timestamp": raw["timestamp"],
                    "value": raw["rating"],
                    "event_type": "rating",
                }
            )
        elif kind == "movielens-udata":
            raw = pd.read_csv(
                path, sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype={0: str, 1: str}
            )
            frame = pd.DataFrame(
                {
                    "user_id": raw["user"],
                    "item_id": raw["item"],
                    "timestamp": raw["ts"],
                    "value": raw["rating"],
                    "event_type": "rating",
                }
            )
        else:
            raw = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "event_type": str})
            raw.columns = [column.strip() for column in raw.columns]
            frame = pd.DataFrame(
                {
                    "user_id": raw["user_id"],
                    "item_id": raw["item_id"],
                    "timestamp": raw["timestamp"] if "timestamp" in raw else np.arange(len(raw), dtype=float),
                    "value": raw.get("value", np.nan),
                    "event_type": raw.get("event_type", "view"),
                }
            )
        frame["timestamp"] = pd.to_numeric(frame["timestamp"], errors="raise").astype(float)
        frame["value"] = pd.to_numeric(frame["value"], errors="raise").astype(float)
    except (ValueError, KeyError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: malformed {kind} file: {exc}") from None
    if frame[["user_id", "item_id"]].isna().any().any():
        bad = int(frame[["user_id", "item_id"]].isna().any(axis=1).idxmax())
        raise DatasetError(f"{path}: data row {bad} has an empty user or item id")
    if frame["timestamp"].isna().any():
        bad = int(frame["timestamp"].isna().idxmax())
        raise DatasetError(f"{path}: data row {bad} has no timestamp")
    frame["user_id"] = frame["user_id"].str.strip()
    frame["item_id"] = frame["item_id"].str.strip()
    frame["row"] = np.arange(len(frame))
    return frame[COLUMNS]


def in_time_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by timestamp, ties kept in original row order (stable)."""
    return frame.sort_values(["timestamp", "row"], kind="mergesort").reset_index(drop=True)
