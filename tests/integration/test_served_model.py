"""What the stack serves is what the offline code computes, and a new event moves a user's list."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from streamrec.publisher import Publisher
from streamrec.shared.cached_list import SCORE_STEPS
from streamrec.shared.datasets import in_time_order, load_interactions
from streamrec.shared.model_contract import ONNX_INPUT_EXCLUDE, ONNX_INPUT_HISTORY, PADDING_INDEX
from streamrec.shared.registry import MODEL_FILE, ModelRegistry
from streamrec.trainer.evaluation.models import model_inputs
from streamrec.trainer.evaluation.protocol import split_interactions

from support import DATASETS, TrainedStack, wait_for

pytestmark = pytest.mark.integration

SERVED_USERS = 40  # ml-100k users replayed (about 4,000 events)
SAMPLE_USERS = 15  # of them, the users whose served lists are compared


def test_a_new_event_changes_the_users_list_under_the_same_model(trained_stack: TrainedStack) -> None:
    live, events, version = trained_stack.live, trained_stack.events, trained_stack.version
    user = sorted(events.user_id.unique())[0]
    before = wait_for(
        lambda: (cached := live.cached(user)) and cached.model_version == version and cached,
        120,
        f"user {user} to be served by model {version}",
    )
    # An item the user never touched and that is not in their list: excluding it cannot be what
    # changes the list; only the model reading the longer history can.
    listed = {item for item, _ in before.items} | set(events.item_id[events.user_id == user])
    new_item = next(item for item in sorted(events.item_id.unique()) if item not in listed)
    with Publisher(settings=live.settings) as publisher:
        publisher.publish_event(
            {"user_id": user, "item_id": new_item, "event_type": "click", "timestamp": time.time()}
        )

    after = wait_for(
        lambda: (cached := live.cached(user)) and cached.generated_at > before.generated_at and cached,
        60,
        f"user {user}'s list to be refreshed after the new event",
    )
    assert after.model_version == before.model_version == version
    assert new_item not in {item for item, _ in after.items}
    assert after.items != before.items, "the list did not follow the user's new event"


@pytest.fixture(scope="module")
def served_ratings(trained_stack: TrainedStack) -> pd.DataFrame:
    """Replay MovieLens (minus each user's last item) into Kafka once; returns the users' ratings."""
    ratings = load_interactions(DATASETS / "ml-100k" / "u.data")
    ratings = ratings[ratings.user_id.isin([str(user) for user in range(1, SERVED_USERS + 1)])].copy()
    ratings["user_id"] = "served-" + ratings.user_id  # users of their own, apart from other tests
    # The protocol's test split: every user's history minus their last item (time, then row order).
    ordered = in_time_order(ratings)
    replayed = ordered[ordered.groupby("user_id").cumcount(ascending=False) > 0]
    assert replayed.value.notna().all()  # the ratings go out as the events' values (rating-mf's targets)
    trained_stack.live.stream_in(replayed, "served")
    return ratings


# The stack's default model, and the rating model (it ranks by predicted rating, trained on values).
@pytest.mark.changes_model
@pytest.mark.parametrize("model", [None, "rating-mf"])
def test_served_lists_are_the_offline_top_n_of_the_same_model(
    trained_stack: TrainedStack, served_ratings: pd.DataFrame, model: str | None
) -> None:
    """Train on the replayed MovieLens users, and recompute the served lists offline: the
    protocol's sequences (the evaluation code) through the published ONNX model."""
    live, ratings = trained_stack.live, served_ratings
    registry = ModelRegistry(live.settings.model_dir)
    served_before = registry.promoted_version()

    # This test is about serving, not the quality gate (tests/integration/test_model_lifecycle.py):
    # let this model through whatever its holdout score against the one served now.
    env = {"STREAMREC_GATE_TOLERANCE": "1"} | ({"STREAMREC_MODEL": model} if model else {})
    result = live.cli("train", "--once", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    version = registry.promoted_version()
    assert version is not None and version not in (trained_stack.version, served_before)
    manifest = registry.verify(version)
    assert manifest.model_type == (model or live.settings.model)

    # Offline: the evaluation protocol's view of the same file (histories = train + validation items).
    split = split_interactions(ratings)
    test_phase = split.test()
    # Users whose whole history fits the ingest window, so serving excludes all of it as the protocol does.
    short = test_phase.users[test_phase.fitting.lengths[test_phase.users] <= live.settings.history_len]
    sample = short[:SAMPLE_USERS]
    histories = test_phase.fitting.take(sample)
    index_of = {item: index for index, item in enumerate(registry.vocabulary(version), start=1)}
    to_model = np.array([index_of.get(item, PADDING_INDEX) for item in split.item_ids], dtype=np.int64)
    protocol_windows = model_inputs(histories, manifest.max_seq_len)  # protocol item + 1, 0 = padding
    history = np.where(protocol_windows > 0, to_model[np.maximum(protocol_windows - 1, 0)], PADDING_INDEX)
    exclude = model_inputs(histories, int(histories.lengths.max()))
    exclude = np.where(exclude > 0, to_model[np.maximum(exclude - 1, 0)], PADDING_INDEX)
    session = ort.InferenceSession(
        str(registry.path(version) / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    scores, items = session.run(None, {ONNX_INPUT_HISTORY: history, ONNX_INPUT_EXCLUDE: exclude})
    vocabulary = registry.vocabulary(version)
    top_n = live.settings.top_n

    for row, user in enumerate(split.user_ids[sample]):
        cached = wait_for(
            lambda user=user: (cached := live.cached(user)) and cached.model_version == version and cached,
            120,
            f"{user}'s list from model {version}",
        )
        offline = [
            (vocabulary[index - 1], float(score))
            for index, score in zip(items[row, :top_n], scores[row, :top_n], strict=True)
        ]
        # Redis stores scores in SCORE_STEPS steps over the list's range: half a step of rounding.
        stored_precision = (offline[0][1] - offline[-1][1]) / SCORE_STEPS / 2
        assert same_ranking(cached.items, offline, atol=1e-5 + stored_precision), (
            f"{user}: served {cached.items} != offline {offline}"
        )


def same_ranking(
    served: list[tuple[str, float]], offline: list[tuple[str, float]], atol: float = 1e-5
) -> bool:
    """Equal lists of (item, score), except that items whose scores tie (within ``atol``, float32
    noise between batch shapes) may come in either order."""
    if len(served) != len(offline):
        return False
    if not np.allclose([s for _, s in served], [s for _, s in offline], atol=atol, rtol=0):
        return False
    start = 0
    for end in range(1, len(offline) + 1):  # cut the offline list into runs of tied scores
        if end == len(offline) or offline[end - 1][1] - offline[end][1] > atol:
            if {i for i, _ in served[start:end]} != {i for i, _ in offline[start:end]}:
                return False
            start = end
    return True
