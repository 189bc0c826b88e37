"""ServedModel on a real ONNX file in a real registry: exclusion, unknown items, k, batch sizes."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.scorer.model_runtime import ServedModel
from streamrec.shared.model_contract import (
    ITEM_POPULARITY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_INPUT_HISTORY,
)
from streamrec.shared.registry import (
    ModelIntegrityError,
    ModelManifest,
    ModelRegistry,
    new_version,
    sha256_file,
)
from streamrec.trainer.export import export_model
from streamrec.trainer.model import SequenceRecommender

N_ITEMS = 10
MAX_SEQ_LEN = 4
TOP_K = 5
VOCABULARY = [f"i{n}" for n in range(1, N_ITEMS + 1)]  # item index n is "i{n}"


class RankByIndexModel(SequenceRecommender):
    """Predictable scores: item n scores n, and the item after the most recent one gets +100.

    So the model's answer reveals what it was fed: the top item is ``i{last % N_ITEMS + 1}``, where
    ``last`` is the index in the last column of the history input (0 when it is all padding).
    """

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        """Index as score plus a bonus for the successor of the last history item."""
        base = torch.arange(self.n_items + 1, dtype=torch.float32).expand(history.shape[0], -1)
        successor = history[:, -1] % self.n_items + 1
        return base + 100.0 * torch.nn.functional.one_hot(successor, self.n_items + 1).to(torch.float32)


def publish_test_model(registry_root: Path, popularity: np.ndarray | None = None) -> str:
    """Export :class:`RankByIndexModel` with the trainer's exporter (with ``popularity``, the
    version's item_popularity.npy) and publish it; return its version."""
    registry = ModelRegistry(registry_root)
    staging = registry.new_staging_dir()
    model = RankByIndexModel(N_ITEMS, MAX_SEQ_LEN, TOP_K)
    sample_histories = np.array([[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]], dtype=np.int64)
    sample_exclude = np.array([[1, 2], [5, 0], [0, 0]], dtype=np.int64)
    exported = export_model(model, VOCABULARY, staging, sample_histories, sample_exclude, popularity)
    manifest = ModelManifest(
        version=new_version(),
        created_at=time.time(),
        model_type="rank-by-index",
        parent_version=None,
        n_items=N_ITEMS,
        max_seq_len=MAX_SEQ_LEN,
        top_k=TOP_K,
        opset=exported.opset,
        files=exported.files,
        signature=exported.signature,
        metrics={},
        data={},
    )
    registry.publish(staging, manifest)
    return manifest.version


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A registry holding one published test model (exporting takes a few seconds: once per module)."""
    root = tmp_path_factory.mktemp("models")
    publish_test_model(root)
    return ModelRegistry(root)


@pytest.fixture(scope="module")
def served(registry: ModelRegistry) -> ServedModel:
    """The test model, loaded."""
    version = registry.newest_version()
    assert version is not None
    return ServedModel.load(registry, version, threads=1)


def ids(ranked: list[tuple[str, float]]) -> list[str]:
    """Item ids of a ranked list."""
    return [item for item, _ in ranked]


def test_load_reads_the_manifest_and_vocabulary(served: ServedModel, registry: ModelRegistry) -> None:
    assert served.version == registry.newest_version()
    assert (served.max_seq_len, served.top_k) == (MAX_SEQ_LEN, TOP_K)
    assert served.index_of["i1"] == 1 and served.index_of["i10"] == N_ITEMS


def test_empty_history_ranks_by_score_best_first(served: ServedModel) -> None:
    # All padding: the "successor" of index 0 is i1, which gets the bonus.
    [ranked] = served.recommend([[]], k=TOP_K)
    assert ids(ranked) == ["i1", "i10", "i9", "i8", "i7"]
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)


def test_history_items_are_excluded_and_the_most_recent_item_is_last(served: ServedModel) -> None:
    [ranked] = served.recommend([["i10", "i9", "i2"]], k=TOP_K)
    assert ids(ranked) == ["i3", "i8", "i7", "i6", "i5"]  # i3 follows i2, the most recent item


def test_unknown_items_are_skipped_in_the_input_and_never_returned(served: ServedModel) -> None:
    [ranked] = served.recommend([["i2", "new-item", "i5", "also-new"]], k=TOP_K)
    # The most recent known item is i5, so i6 gets the bonus; i2 and i5 are excluded.
    assert ids(ranked) == ["i6", "i10", "i9", "i8", "i7"]
    [only_unknown] = served.recommend([["new-item"]], k=TOP_K)
    assert ids(only_unknown) == ["i1", "i10", "i9", "i8", "i7"]


def test_items_older_than_max_seq_len_are_still_excluded(served: ServedModel) -> None:
    history = ["i10", "i9", "i8", "i1", "i2", "i3", "i4"]  # the model reads only the last 4
    [ranked] = served.recommend([history], k=TOP_K)
    assert ids(ranked) == ["i5", "i7", "i6"]  # i5 follows i4; masked items are dropped, not padded


def test_excluded_items_leave_a_short_list_when_the_catalogue_runs_out(served: ServedModel) -> None:
    [ranked] = served.recommend([VOCABULARY[:-1]], k=TOP_K)
    assert ranked == [("i10", pytest.approx(110.0))]  # i10 follows i9, the most recent
    assert served.recommend([VOCABULARY], k=TOP_K) == [[]]


def test_k_truncates_and_is_capped_by_top_k(served: ServedModel) -> None:
    assert ids(served.recommend([["i2"]], k=2)[0]) == ["i3", "i10"]
    assert len(served.recommend([["i2"]], k=50)[0]) == TOP_K
    with pytest.raises(ValueError):
        served.recommend([["i2"]], k=0)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_a_batch_gives_the_same_lists_as_single_calls(served: ServedModel, batch_size: int) -> None:
    histories = [[f"i{(user * 3 + n) % N_ITEMS + 1}" for n in range(user % 6)] for user in range(batch_size)]
    batched = served.recommend(histories, k=TOP_K)
    assert len(batched) == batch_size
    assert batched == [served.recommend([history], k=TOP_K)[0] for history in histories]


def test_an_empty_batch_returns_nothing(served: ServedModel) -> None:
    assert served.recommend([], k=TOP_K) == []


def test_a_corrupt_model_file_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    version = registry.newest_version()
    assert version is not None
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(registry.path(version), copy.path(version))
    with open(copy.path(version) / MODEL_FILE, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ModelIntegrityError, match="corrupt"):
        ServedModel.load(copy, version)


def test_a_missing_version_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(ModelIntegrityError):
        ServedModel.load(registry, "20000101T000000.000Z-000000")


def test_idle_inference_threads_sleep_instead_of_spinning(served: ServedModel) -> None:
    # The scorer shares its cores with ingest and the broker: idle threads must not busy-wait.
    options = served._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_batch_is_as_wide_as_its_longest_known_history(served: ServedModel) -> None:
    assert served.fixed_history_width is None  # the exporter writes a dynamic history width
    history, exclude = served.encode([["i1"], ["i2", "new-item", "i3"]])
    assert history.tolist() == [[0, 1], [2, 3]]  # unknown items take no column
    assert exclude.tolist() == [[1, 0], [2, 3]]
    history, _ = served.encode([[f"i{n}" for n in range(1, 8)]])
    assert history.tolist() == [[4, 5, 6, 7]]  # never wider than max_seq_len
    history, _ = served.encode([[], ["new-item"]])
    assert history.tolist() == [[0], [0]]  # at least one column


def test_a_fixed_width_version_gets_max_seq_len_columns(served: ServedModel) -> None:
    # Versions exported before the width became dynamic declare it as max_seq_len in their signature.
    signature = copy.deepcopy(served.manifest.signature)
    signature["inputs"][ONNX_INPUT_HISTORY]["shape"][1] = MAX_SEQ_LEN
    fixed = ServedModel(replace(served.manifest, signature=signature), served.vocabulary, served._session)
    assert fixed.fixed_history_width == MAX_SEQ_LEN
    history, _ = fixed.encode([["i1"], ["i2", "i3"]])
    assert history.tolist() == [[0, 0, 0, 1], [0, 0, 2, 3]]
    assert ids(fixed.recommend([["i2"]], k=2)[0]) == ids(served.recommend([["i2"]], k=2)[0])


# i10 was trained on 1,000 times, i9 twice, the others never: ln(1 + popularity) = 6.91, 1.10, 0.
POPULARITY = np.array([0] * 8 + [2, 1000], dtype=np.int64)


@pytest.fixture(scope="module")
def popular_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A registry holding the test model published with POPULARITY."""
    root = tmp_path_factory.mktemp("models-popularity")
    publish_test_model(root, POPULARITY)
    return ModelRegistry(root)


def load_newest(registry: ModelRegistry, penalty: float) -> ServedModel:
    version = registry.newest_version()
    assert version is not None
    return ServedModel.load(registry, version, threads=1, popularity_penalty=penalty)


def test_penalty_zero_serves_byte_identical_lists(popular_registry: ModelRegistry) -> None:
    version = popular_registry.newest_version()
    assert version is not None
    today = ServedModel.load(popular_registry, version, threads=1)  # how the scorer loaded it before
    off = load_newest(popular_registry, 0.0)
    histories = [[], ["i2"], ["i10", "i9", "i2"], ["new-item"], VOCABULARY[:-1]]
    assert off.recommend_encoded(histories, TOP_K, 1234.5) == today.recommend_encoded(
        histories, TOP_K, 1234.5
    )
    assert off.recommend(histories, k=3) == today.recommend(histories, k=3)


def test_the_penalty_re_ranks_the_candidates_by_popularity(popular_registry: ModelRegistry) -> None:
    # Empty history: i1 101, i10 10, i9 9, i8 8, i7 7. Penalty 1: i10 10 - 6.91 = 3.09, i9 7.90.
    served = load_newest(popular_registry, 1.0)
    [ranked] = served.recommend([[]], k=TOP_K)
    assert ids(ranked) == ["i1", "i8", "i9", "i7", "i10"]
    assert [score for _, score in ranked] == pytest.approx(
        [101.0, 8.0, 9 - np.log(3), 7.0, 10 - np.log(1001)]
    )
    [cut] = served.recommend([[]], k=2)  # fewer than top_k: the best of the re-ranked candidates
    assert ids(cut) == ["i1", "i8"]
    # The encoded lists hold the same re-ranked order and scores.
    assert served.recommend_encoded([[]], TOP_K, 0.0) == served.list_encoder.encode(
        *served.rank([[]], TOP_K)[::-1], served.version, 0.0
    )


def test_the_penalty_is_off_for_a_version_without_popularity(
    registry: ModelRegistry, served: ServedModel
) -> None:
    unaware = load_newest(registry, 1.0)
    assert unaware.popularity_penalty == 0.0
    assert unaware.recommend([[], ["i2"]], k=TOP_K) == served.recommend([[], ["i2"]], k=TOP_K)


def test_a_popularity_file_of_the_wrong_shape_is_refused(
    popular_registry: ModelRegistry, tmp_path: Path
) -> None:
    version = popular_registry.newest_version()
    assert version is not None
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(popular_registry.path(version), copy.path(version))
    manifest = copy.manifest(version)
    np.save(copy.path(version) / ITEM_POPULARITY_FILE, POPULARITY[:-1], allow_pickle=False)
    files = {**manifest.files, ITEM_POPULARITY_FILE: sha256_file(copy.path(version) / ITEM_POPULARITY_FILE)}
    (copy.path(version) / MANIFEST_FILE).write_bytes(replace(manifest, files=files).to_json())
    with pytest.raises(ModelIntegrityError, match=r"item_popularity\.npy has shape"):
        ServedModel.load(copy, version, popularity_penalty=0.5)
