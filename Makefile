# pairlake: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UI_PORT ?= 3000
SEARCH_PORT ?= 1234
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PYTHONUNBUFFERED := 1
# torch on a busy CPU: spinning OpenMP threads starve the data-loading workers.
export OMP_WAIT_POLICY ?= PASSIVE
# torch's CPU tensors on transparent huge pages: training the demo model page-faulted ~40% of its
# time away on 4 KiB pages; same weights, bit for bit, about twice as fast.
export THP_MEM_ALLOC_ENABLE ?= 1

.PHONY: setup demo demo-s3 s3-server ui test bench clean

# Spark needs a Java runtime; the venv gets the pinned, tested-together package set. uv installs it
# (torch's CUDA libraries are GBs to unpack): 34 s here where pip took 3 min; same packages.
# Compiled to bytecode at install (uv does not by default; pip does): where PYTHONDONTWRITEBYTECODE
# is set, as on these machines, every process otherwise compiles what it imports, every time
# (`import open_clip` 19 -> 7 CPU-s, pandas 2.7 -> 0.9, the Dagster definitions 8.0 -> 3.7).
$(STAMP): pyproject.toml constraints.txt Makefile
	@command -v java >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless; }
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -c constraints.txt -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 assets orchestration spark_jobs gpu_jobs infra benchmarks
	@# clip-retrieval's own ClipClient, for the wire-compatibility tests: it needs only requests, and
	@# the package's dependencies (torch pins, flask, ...) would fight the project's.
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps clip-retrieval==2.45.0
	@touch $(STAMP)

# The Spark driver JVM's classes, archived once (infra/spark_cds.py): a session starts in ~9 s and
# 15 CPU-s instead of ~15 s and 25. Built when missing, keyed by the JDK, the venv and pyspark.
setup: $(STAMP)
	@$(BIN)/python -m infra.spark_cds >/dev/null

demo: setup
	$(BIN)/pairlake demo

# The same demo with the lake in a bucket of a local S3-compatible server (SeaweedFS, from PyPI),
# started for the run; `make s3-server` serves that store again for the commands the demo prints.
demo-s3: setup
	$(BIN)/pairlake demo --store s3

s3-server: setup
	$(BIN)/pairlake --profile demo s3-server

# The Dagster UI on the demo's instance, with the demo profile, and the search UI beside it
# (`pairlake serve`, http://127.0.0.1:$(SEARCH_PORT)/); the sample crawl's image server runs too, so
# that runs launched from the UI can download. Ctrl-C stops all three.
ui: export PAIRLAKE_PROFILE ?= demo
ui: setup
	@mkdir -p $(DAGSTER_HOME); test -f $(DAGSTER_HOME)/dagster.yaml || cp infra/dagster/dagster.yaml $(DAGSTER_HOME)/
	@pids=""; \
	if [ -f build/sample_crawl/site/manifest.json ]; then \
		$(BIN)/python -m infra.image_server build/sample_crawl/site --port 18765 & pids="$$pids $$!"; \
	fi; \
	$(BIN)/pairlake serve --port $(SEARCH_PORT) & pids="$$pids $$!"; \
	trap "kill $$pids 2>/dev/null" EXIT INT TERM; \
	echo "search UI: http://127.0.0.1:$(SEARCH_PORT)/   Dagster UI: http://127.0.0.1:$(UI_PORT)/"; \
	$(BIN)/dagster dev -m orchestration.definitions -h 127.0.0.1 -p $(UI_PORT)

# One pytest worker per core; groups (tests/conftest.py) are handed out in the order conftest sets:
# the longest first, or, when the committed demo model is stale, its users last while it retrains.
test: setup
	$(BIN)/python -m pytest -n auto --dist loadgroup --no-loadscope-reorder --durations=25

bench: setup
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf lake build .dagster_home .pytest_cache
