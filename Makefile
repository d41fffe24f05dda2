# The two commands in the README: `make demo` and `make test`. Each does its own set-up first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.diarist-installed

.PHONY: setup demo test bench accuracy transcription identify soak lint clean

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

# not part of the tests: ~10 minutes, stock pyannote vs diarist on real speech (README: Accuracy)
accuracy: setup
	$(VENV)/bin/python benchmarks/accuracy.py $(ARGS)

# not part of the tests: ~5 minutes, WER/cpWER of task transcribe on real voices (README: Transcription)
transcription: setup
	$(VENV)/bin/python benchmarks/transcription.py $(ARGS)

# not part of the tests: ~3 minutes, names on known voices on the dev set's AMI clips (README: Known voices)
identify: setup
	$(VENV)/bin/python benchmarks/identify.py $(ARGS)

# not part of the tests: drops files and kills the daemon for MINUTES, then prints the counts (README)
MINUTES ?= 10
soak: setup
	$(VENV)/bin/python tests/soak.py --minutes $(MINUTES)

lint: setup
	$(VENV)/bin/ruff check daemon handlers policies tests benchmarks

clean:
	rm -rf $(VENV) inbox outbox .pytest_cache .hypothesis .ruff_cache
