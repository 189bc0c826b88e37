# The two commands of the README:  `make demo`  and  `make test`.
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: demo dev test lint bench

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap
	scripts/bootstrap

## demo: run streamrec's main job on embedded defaults (broker, Redis, services, training, recommendations)
demo: $(STAMP)
	$(VENV)/bin/streamrec demo

## dev: run the stack until Ctrl-C
dev: $(STAMP)
	$(VENV)/bin/streamrec dev

## test: lint, then the whole test suite (unit + integration on a real broker and Redis)
test: $(STAMP) lint
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## bench: the benchmark suite on this machine; writes docs/benchmarks.md (about an hour on 2 cores, plus the memory part: 3 replays of 1M events, about 20 minutes each; BENCH_MEMORY_EVENTS and BENCH_MEMORY_RUNS size it)
bench: $(STAMP)
	$(VENV)/bin/python -m bench
