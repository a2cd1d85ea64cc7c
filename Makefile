# Two entry points for a new user: `make demo` and `make test`.
# Both create .venv and install on first use; the stamp file makes the
# second run skip the install (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SAMPLE := sample_data/demo_walkers.mp4

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/videoring info $(SAMPLE)
	$(VENV)/bin/videoring analyze $(SAMPLE) -o out
	$(VENV)/bin/videoring eval out/demo_walkers/results.json sample_data/demo_walkers.json

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) pipelines/bench_decode.py
	$(PY) pipelines/bench_ring.py
	$(PY) pipelines/bench_engine.py
	$(PY) pipelines/bench_pipeline.py --write-docs

clean:
	rm -rf $(VENV) out .pytest_cache
