# make demo / make test / make docs: each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cloudlab-installed

.PHONY: demo test lint docs system-deps benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $(STAMP)

# SExtractor and PSFEx (DRE preprocessing) come from Debian's packages.
system-deps:
	@if ! command -v source-extractor >/dev/null 2>&1 || ! command -v psfex >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq source-extractor psfex; \
	fi

demo: $(STAMP)
	$(BIN)/cloudlab demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -ra --nbmake --nbmake-timeout=600 tests notebooks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

benchmarks: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script --quick || exit 1; done

clean:
	rm -rf $(VENV) site .pytest_cache
