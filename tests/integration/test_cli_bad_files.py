"""Every CLI command that reads a file refuses a malformed one: non-zero exit, one clear line.

The commands: ``publish FILE`` (JSONL/CSV events), ``replay FILE`` (MovieLens or generic CSV),
``evaluate --dataset FILE`` and ``demo --movielens FILE``. Each gets binary garbage, an empty
file, a missing file, wrong columns, a wrong delimiter and rows that cannot be events, and must
answer with exactly one line on stderr, ``streamrec: error: …`` naming the file, no traceback,
and nothing published.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import LiveStack

pytestmark = pytest.mark.integration

GARBAGE = bytes(range(256)) * 8 + b"\n\x00\xff\xfe" * 100
HEADERED_GARBAGE = b"user_id,item_id,timestamp\n" + GARBAGE

# name -> content; None: the file does not exist.
DATASET_FILES: dict[str, bytes | None] = {
    "missing.csv": None,
    "garbage.csv": GARBAGE,
    "garbage.data": GARBAGE,
    "headered-garbage.csv": HEADERED_GARBAGE,
    "empty.csv": b"",
    "blank-lines.csv": b"\n\n\n",
    "header-only.csv": b"user_id,item_id,timestamp\n",
    "wrong-columns.csv": b"a,b,c\n1,2,3\n",
    "semicolons.csv": b"user_id;item_id;timestamp\n1;2;1700000000\n",
    "commas-u.data": b"1,2,3,881250949\n1,3,4,881250950\n",
    "tabs-ratings.csv": b"userId\tmovieId\trating\ttimestamp\n1\t2\t3.5\t964982703\n",
    "ragged-ratings.csv": b"userId,movieId,rating,timestamp\n1,2,3.5,964982703\n1,2\n1,2,3,4,5,6\n",
    "text-timestamp.csv": b"user_id,item_id,timestamp\n1,2,yesterday\n",
    "text-rating-u.data": b"1\t2\tgood\t881250949\n",
    "no-item.csv": b"user_id,item_id,timestamp\n1,,1700000000\n",
    "negative-time.csv": b"user_id,item_id,timestamp\n1,2,1700000000\n1,3,-5\n",
    "future-time.csv": b"user_id,item_id,timestamp\n1,2,1700000000\n1,3,99999999999\n",
    "infinite-rating.csv": b"userId,movieId,rating,timestamp\n1,2,inf,964982703\n",
    "bad-event-type.csv": b"user_id,item_id,timestamp,event_type\n1,2,1700000000,View!\n",
    "long-user.csv": b"user_id,item_id,timestamp\n" + b"u" * 300 + b",2,1700000000\n",
}
EVENT_FILES: dict[str, bytes | None] = {
    "missing.jsonl": None,
    "garbage.jsonl": GARBAGE,
    "empty.jsonl": b"",
    "truncated.jsonl": b'{"user_id": 1, "item_id": 2, "event_type": "view"}\n{"user_id": 1, "item_',
    "array.jsonl": b"[1, 2, 3]\n",
    "nan.jsonl": b'{"user_id": 1, "item_id": 2, "event_type": "view", "value": NaN}\n',
    "not-utf8.jsonl": b'{"user_id": "\xff", "item_id": 2, "event_type": "view"}\n',
    "garbage.csv": GARBAGE,
    "empty.csv": b"",
    "header-only.csv": b"user_id,item_id,event_type\n",
    "wrong-columns.csv": b"a,b,c\n1,2,3\n",
    "semicolons.csv": b"user_id;item_id;event_type\n1;2;view\n",
    "negative-time.csv": b"user_id,item_id,event_type,timestamp\n1,2,view,-5\n",
}
# evaluate and demo share replay's reader; each run costs seconds of imports, so they get a sample.
EVALUATE_FILES = ["missing.csv", "garbage.data", "header-only.csv", "semicolons.csv", "ragged-ratings.csv"]
# demo starts a whole stack once its file is read: only files refused on the first line.
DEMO_FILES = ["missing.csv", "garbage.data", "empty.csv", "wrong-columns.csv", "semicolons.csv"]


def write(directory: Path, name: str, content: bytes | None) -> Path:
    """The file ``name`` with ``content`` in ``directory`` (not created when content is None)."""
    path = directory / name
    if content is not None:
        path.write_bytes(content)
    return path


def assert_refused(result: subprocess.CompletedProcess[str], path: Path) -> None:
    """Non-zero exit, and stderr is one line: ``streamrec: error:`` naming the file."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, (path.name, result.stdout[-500:])
    assert "Traceback" not in result.stderr, (path.name, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("streamrec: error: "), (path.name, result.stderr[-1000:])
    assert path.name in lines[0], (path.name, lines[0])


def run(live: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`streamrec ARGS…` against the session stack."""
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args],
        env=live.env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )


def assert_every_file_refused(
    live_stack: LiveStack, tmp_path: Path, files: dict[str, bytes | None], *command: str
) -> None:
    """``streamrec COMMAND… FILE`` refuses each of ``files`` with one clear line."""
    for name, content in files.items():
        path = write(tmp_path, name, content)
        assert_refused(run(live_stack, *command, str(path)), path)


def assert_every_file_refused_and_nothing_published(
    live_stack: LiveStack, tmp_path: Path, command: str, files: dict[str, bytes | None]
) -> None:
    """``streamrec COMMAND FILE`` refuses each file, and no event of any of them reaches ingest."""
    counter = live_stack.feature_updates()
    before = counter.update()
    try:
        assert_every_file_refused(live_stack, tmp_path, files, command)
        # A refused file publishes nothing (no partial replay up to the bad row).
        assert counter.update(timeout=1.0) == before
    finally:
        counter.close()


def test_replay_refuses_malformed_files_and_publishes_nothing(live_stack: LiveStack, tmp_path: Path) -> None:
    assert_every_file_refused_and_nothing_published(live_stack, tmp_path, "replay", DATASET_FILES)


def test_evaluate_refuses_malformed_files(live_stack: LiveStack, tmp_path: Path) -> None:
    files = {name: DATASET_FILES[name] for name in EVALUATE_FILES}
    assert_every_file_refused(live_stack, tmp_path, files, "evaluate", "--dataset")


def test_publish_refuses_malformed_event_files(live_stack: LiveStack, tmp_path: Path) -> None:
    assert_every_file_refused_and_nothing_published(live_stack, tmp_path, "publish", EVENT_FILES)


def test_demo_refuses_malformed_movielens_files(live_stack: LiveStack, tmp_path: Path) -> None:
    files = {name: DATASET_FILES[name] for name in DEMO_FILES}
    assert_every_file_refused(live_stack, tmp_path, files, "demo", "--movielens")
