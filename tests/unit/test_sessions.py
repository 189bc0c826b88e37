"""SessionScorer on real ONNX files in a real registry: which version it serves, refusals, hot swap."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from test_model_runtime import publish_test_model

from streamrec.api.sessions import SessionScorer
from streamrec.shared.model_contract import MODEL_FILE
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """Two good versions (the first promoted, the second newest) and a corrupt copy of the first."""
    root = tmp_path_factory.mktemp("models")
    registry = ModelRegistry(root)
    first = publish_test_model(root)
    publish_test_model(root)
    registry.promote(first, "test")
    broken = registry.path(first).parent / "broken-version"
    shutil.copytree(registry.path(first), broken)
    model_file = broken / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:100])
    return registry


def scorer_for(registry: ModelRegistry, tmp_path: Path) -> SessionScorer:
    return SessionScorer(Settings(data_dir=tmp_path, model_dir=registry.root), check_seconds=60.0)


def test_without_a_served_version_it_loads_promoted_and_ranks_sessions(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    sessions = scorer_for(registry, tmp_path)
    assert sessions.due() and sessions.rank(["i3"]) is None  # nothing loaded yet
    sessions.refresh(None, wait=True)
    assert not sessions.due()
    ranked = sessions.rank(["i3", "not-in-the-model"])
    assert ranked is not None and ranked.model_version == registry.promoted_version()
    # The test model puts the successor of the most recent item first; the session's item never comes back.
    assert ranked.items[0][0] == "i4" and "i3" not in dict(ranked.items)
    assert sessions.rank(["not-in-the-model"]) is None  # no known item: the caller's fallback


def test_a_refused_version_keeps_the_current_one_and_a_good_one_is_swapped_in_the_background(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    sessions = scorer_for(registry, tmp_path)
    promoted = registry.promoted_version()
    other = next(version for version in reversed(registry.versions()) if version[0].isdigit())
    assert promoted is not None and other != promoted
    sessions.refresh(promoted, wait=True)
    sessions.refresh("broken-version", wait=True)
    assert "broken-version" in sessions.refused and sessions.model is not None
    assert sessions.model.version == promoted
    sessions.refresh(other)  # the served version moved: loaded in a thread, the old one serves meanwhile
    deadline = time.monotonic() + 60
    while sessions.model.version != other and time.monotonic() < deadline:
        assert sessions.rank(["i1"]) is not None
        time.sleep(0.05)
    assert sessions.model.version == other
