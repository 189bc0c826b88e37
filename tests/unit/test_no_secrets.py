"""No secrets in the repository or the image's build context (issue: "no secrets in the repo, images or logs")."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Credentials that never belong in a repository, whatever file they are in.
SECRET_PATTERNS = {
    "private key": re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key id": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}


def tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing is tracked")
    return [ROOT / name.decode() for name in listing.split(b"\0") if name]


def find_secrets(content: bytes) -> list[str]:
    """Names of the secret patterns ``content`` contains."""
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(content)]


def test_no_tracked_file_holds_a_credential() -> None:
    found = {
        str(path.relative_to(ROOT)): kinds
        for path in tracked_files()
        if path.is_file() and (kinds := find_secrets(path.read_bytes()))
    }
    assert found == {}


def test_the_detector_finds_what_it_looks_for() -> None:
    key = b"-----BEGIN " + b"PRIVATE KEY-----\nMIIE...\n"  # split so this file does not match itself
    assert find_secrets(key) == ["private key"]
    assert find_secrets(b"id = AKIA" + b"ABCDEFGHIJKLMNOP") == ["AWS access key id"]
    assert find_secrets(b"REDIS_PASSWORD=\n") == []


def test_env_files_stay_out_of_git_and_out_of_the_image() -> None:
    assert ".env" not in {path.name for path in tracked_files()}
    for ignore_file in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore_file).read_text().split(), ignore_file
