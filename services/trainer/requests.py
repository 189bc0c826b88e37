"""Which training cycle answers which "train now" request (the contract: shared/train_requests.py).

The rule, owned by :class:`CycleRequests`: a request is answered only by a cycle that read every
event it asks for. That is a cycle the trainer started after it saw the request (its catch-up
reads to the ends of the topic as they were then, past the request's ends), or a cycle in
progress whose log, once caught up, already reached the request's ends. Any other request that
arrives during a cycle stays pending, and the trainer runs the next cycle at once, on everything.
So one request costs at most one training, and the model it reports holds every event it asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamrec.shared.logs import get_logger
from streamrec.shared.train_requests import RequestBox, TrainProgress, TrainRequest

if TYPE_CHECKING:
    from streamrec.trainer.train import EpochStats  # torch: the trainer imports it only when a cycle runs

log = get_logger(__name__)


class CycleRequests:
    """The requests one training cycle answers, and their progress reports along the way."""

    def __init__(self, box: RequestBox, taken: list[TrainRequest], max_epochs: int) -> None:
        self.box = box
        self.max_epochs = max_epochs
        # The requests this cycle answers, by id: those pending when it started, plus those it covers.
        self.serving: dict[str, TrainRequest] = {request.id: request for request in taken}
        self.positions: dict[int, int] | None = None  # the log's position once caught up
        if taken:
            log.info("training now on request", extra={"requests": [r.id for r in taken]})
        self._report_all(TrainProgress("catching_up"))

    def caught_up(self, positions: dict[int, int]) -> None:
        """The cycle's log has read up to ``positions`` (partition -> next offset): it trains on that."""
        self.positions = dict(positions)
        self._adopt_covered()
        self._report_all(TrainProgress("training", epochs=self.max_epochs))

    def on_epoch(self, stats: EpochStats) -> None:
        """After each epoch: report progress; tell requests that came meanwhile where they stand."""
        self._adopt_covered()
        metric = {
            name: value
            for name, value in (("val_ndcg@10", stats.val_ndcg), ("val_rmse", stats.val_rmse))
            if value is not None
        }
        self._report_all(TrainProgress("training", epoch=stats.epoch, epochs=self.max_epochs, metric=metric))
        for request in self.box.pending():
            if request.id not in self.serving:
                self.box.report(
                    request,
                    TrainProgress("queued", "behind the training cycle in progress, which started before it"),
                )

    def answer(
        self, manifest: dict[str, Any] | None, promoted: bool = False, error: str = "", warning: str = ""
    ) -> list[str]:
        """Answer every request this cycle serves: its model (``manifest``), or why there is none
        (``error``). Returns the ids answered."""
        self._adopt_covered()
        for request in self.serving.values():
            if error:
                self.box.report(request, TrainProgress("failed", error))
                continue
            missed = self.positions is None or not request.covered_by(self.positions)
            note = "; ".join(
                text
                for text in (
                    warning,
                    "the trainer's catch-up stopped before the newest events: the model may miss some"
                    if missed
                    else "",
                )
                if text
            )
            self.box.report(
                request, TrainProgress("done", manifest=manifest, promoted=promoted, warning=note)
            )
        if self.serving:
            log.info(
                "training requests answered",
                extra={"requests": list(self.serving), "state": "failed" if error else "done"},
            )
        return list(self.serving)

    def _adopt_covered(self) -> None:
        """Serve the pending requests whose events this cycle's log already holds."""
        if self.positions is None:
            return
        for request in self.box.pending():
            if request.id not in self.serving and request.covered_by(self.positions):
                self.serving[request.id] = request

    def _report_all(self, progress: TrainProgress) -> None:
        for request in self.serving.values():
            self.box.report(request, progress)
