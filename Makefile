# splatpack: `make demo` runs the main job end to end, `make test` runs the whole suite.
# Both set up the virtual environment first (nothing needs installing by hand).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast lint typecheck check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "splatpack needs Python 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later pulls a different build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# the fused C++ CPU renderer (codec/render/csrc), built once per machine and source version
	$(BIN)/python -m codec.render.cpu_ext
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m workers.demo

test: $(STAMP)
	$(BIN)/ruff check codec service workers infra tests bench
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check codec service workers infra tests bench
	$(BIN)/ruff format --check codec service workers infra tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/splatpack bench ../shared/data/carphone_pristine.mp4 --frames 60
	$(BIN)/splatpack bench ../shared/data/Megamind.avi --frames 60

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
