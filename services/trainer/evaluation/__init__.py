"""Offline evaluation (``streamrec evaluate``): the protocol of ../shared/EVALUATION.md.

- :mod:`.protocol` — the temporal leave-last-out split, the two phases and the ranking metrics.
- :mod:`.recommender` — the interface every evaluated model implements, and grid-search tuning.
- :mod:`.baselines` — MostPop, ItemKNN and EASE.
- :mod:`.models` — the adapter that evaluates the trainer's torch models (mf, sasrec, …).
- :mod:`.bias` — coverage, popularity and long-tail share of the test lists, NDCG by history
  length, and the trade-off of the scorer's popularity penalty.
- :mod:`.runner` — runs the chosen models through both phases; :mod:`.report` prints and plots.

The CLI calls :func:`.runner.evaluate` and :func:`.report.format_table`. Submodules are imported on
demand: the protocol alone needs neither torch nor matplotlib.
"""
