# splatpack: `make demo` runs the main job end to end, `make test` runs the whole suite.
# Both set up the virtual environment first (nothing needs installing by hand).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup player-setup chromium demo test test-fast test-player lint typecheck check bench clean

setup: $(STAMP) player-setup

# The browser player (player/): Node packages for its tests (npm, dev tools only) and Debian's
# chromium for the headless browser test. apt-get runs only when chromium is missing (as root, or
# through sudo when there is one).
NODE_STAMP := player/node_modules/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

player-setup: $(NODE_STAMP) chromium

$(NODE_STAMP): player/package.json player/package-lock.json
	cd player && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the player's browser test"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

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
	$(BIN)/python -m frontdoor.demo

test: setup
	$(BIN)/ruff check codec service workers infra frontdoor tests bench
	cd player && node --test test/
	$(BIN)/pytest -q

# the player's Node tests alone (decoder against the Python-written fixtures)
test-player: setup
	cd player && node --test test/

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check codec service workers infra frontdoor tests bench
	$(BIN)/ruff format --check codec service workers infra frontdoor tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/splatpack bench ../shared/data/carphone_pristine.mp4 --frames 60
	$(BIN)/splatpack bench ../shared/data/Megamind.avi --frames 60

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
