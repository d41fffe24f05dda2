# The two commands in the README: `make demo` and `make test`. Each does its own set-up first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.diarist-installed

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/diarist demo

test: setup
	$(VENV)/bin/python -m pytest

# not part of the tests: minutes to an hour, prints tables (README: Benchmarks)
bench: setup
	$(VENV)/bin/python benchmarks/run.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check daemon handlers policies tests benchmarks

clean:
	rm -rf $(VENV) inbox outbox .pytest_cache .hypothesis .ruff_cache
