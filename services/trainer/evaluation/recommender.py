"""The interface every evaluated model implements, and the default tuning (grid search).

A :class:`Recommender` is fitted on user sequences and then scores every item for a batch of
histories. The runner drives it through the protocol: ``tune(validation)`` chooses the
hyper-parameters on validation NDCG@10 (and leaves the model configured with them), then
``fit(test.fitting)`` refits from scratch on train + validation and ``score`` is ranked on test.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamrec.trainer.evaluation.protocol import Phase, UserSequences, evaluate_phase

SELECTION_METRIC = "ndcg@10"


@dataclass
class Tuning:
    """What tuning on validation chose, and how the chosen setting did there."""

    params: dict[str, Any]  # the chosen hyper-parameters (epoch-based models: incl. "epochs")
    validation: dict[str, float]  # protocol metrics of the chosen setting on validation
    seconds: float = 0.0  # wall time of the whole tuning
    # Epoch-based models: validation NDCG@10 after each epoch (the curve early stopping saw).
    curve: list[float] = field(default_factory=list)
    tried: list[tuple[dict[str, Any], float]] = field(default_factory=list)  # (params, val NDCG@10)


class Recommender(ABC):
    """A model under evaluation: ``fit`` on sequences, ``score`` every item for given histories."""

    name: str = ""

    @abstractmethod
    def fit(self, fitting: UserSequences) -> None:
        """Fit from scratch, with the current hyper-parameters, on every user's ``fitting`` items."""

    @abstractmethod
    def score(self, histories: UserSequences) -> np.ndarray:
        """Scores [n_users of histories, n_items] of every item for each history (higher = better).

        Excluding the history is the protocol's job; the scores of history items are ignored.
        """

    @abstractmethod
    def n_params(self) -> int:
        """Parameters of the fitted model (classical models: the number of stored weights)."""

    def grid(self) -> list[dict[str, Any]]:
        """Hyper-parameter settings to try on validation; ``[{}]`` = nothing to tune."""
        return [{}]

    def set_params(self, **params: Any) -> None:
        """Use these hyper-parameters from the next ``fit`` on."""
        for name, value in params.items():
            if not hasattr(self, name):
                raise ValueError(f"{self.name}: unknown hyper-parameter {name!r}")
            setattr(self, name, value)

    def fitted_settings(self, fitting: UserSequences) -> Iterator[dict[str, Any]]:
        """Fit the model with each setting of the grid in turn, yielding the setting once fitted.

        Override to share work between settings (e.g. one expensive step per group of settings).
        """
        for params in self.grid():
            self.set_params(**params)
            self.fit(fitting)
            yield params

    def tune(self, validation: Phase) -> Tuning:
        """Choose hyper-parameters on validation NDCG@10 (grid search; the first best wins ties).

        Leaves the model configured with the best setting; the runner then refits it on train + validation.
        """
        started = time.perf_counter()
        best: tuple[float, dict[str, Any], dict[str, float]] | None = None
        tried: list[tuple[dict[str, Any], float]] = []
        for params in self.fitted_settings(validation.fitting):
            metrics = evaluate_phase(self.score, validation)
            tried.append((params, metrics[SELECTION_METRIC]))
            if best is None or is_better(metrics[SELECTION_METRIC], best[0]):
                best = (metrics[SELECTION_METRIC], params, metrics)
        assert best is not None, "grid() must return at least one setting"
        _, params, metrics = best
        self.set_params(**params)
        return Tuning(params, metrics, time.perf_counter() - started, tried=tried)


def is_better(value: float, best: float) -> bool:
    """Strictly better; NaN is never better (a diverged setting must not win)."""
    return not math.isnan(value) and (math.isnan(best) or value > best)
