# make demo / make test / make docs: each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cloudlab-installed
# the package versions the suite last passed with; CONSTRAINTS= installs the newest instead
CONSTRAINTS ?= constraints.txt

.PHONY: demo test lint docs system-deps tools benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[all]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

# SExtractor and PSFEx (DRE preprocessing) come from Debian's packages.
system-deps:
	@if ! command -v source-extractor >/dev/null 2>&1 || ! command -v psfex >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq source-extractor psfex; \
	fi

# s3rver (the loopback S3 server of the tests and benchmarks) from npm, into .tools/; Node.js and
# npm come from Debian's packages when missing.
TOOLS := .tools
S3RVER := $(TOOLS)/node_modules/.bin/s3rver

$(S3RVER):
	@if ! command -v npm >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; \
	fi
	npm install --prefix $(TOOLS) --no-audit --no-fund --silent s3rver@3.7.1

tools: $(S3RVER)

demo: $(STAMP)
	$(BIN)/cloudlab demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) system-deps tools lint
	$(BIN)/pytest -q -ra --nbmake --nbmake-timeout=600 tests notebooks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

benchmarks: $(STAMP) tools
	for script in benchmarks/*.py; do $(BIN)/python $$script --quick || exit 1; done

clean:
	rm -rf $(VENV) $(TOOLS) site .pytest_cache
