# `make serve` and `make test` do all set-up on a fresh machine (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install browser serve test test-unit bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Debian's chromium for the dashboard's browser tests (tests/test_web_browser.py drives it with
# Playwright; Playwright's own browser download is not used). Installed when missing (as root).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { echo "== installing Debian's chromium (apt-get) for tests/test_web_browser.py"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null; } \
	  || { echo "chromium is missing at $(CHROMIUM) and could not be installed: run 'apt-get install -y chromium' as root" >&2; exit 1; }
	@test -x $(CHROMIUM) || { echo "chromium is still missing at $(CHROMIUM) after apt-get" >&2; exit 1; }

serve: install
	$(BIN)/histosynth serve --port $(PORT)

# The whole suite on the local storage folder, then the service tests again on the real S3
# object store (SeaweedFS, started by the tests; the two-machine test runs on S3 already). The
# tests that kill or stop the worker (test_faults.py and those marked worker_kill) run in the
# first pass only, for time (~5 min): they pass on S3 too, and the two-machine test already
# resumes a killed job from its checkpoint in S3.
test: install browser
	$(BIN)/python -m pytest -q -ra --durations=25
	HISTOSYNTH_TEST_STORAGE=s3 $(BIN)/python -m pytest -q -ra --durations=10 -m "integration and not worker_kill" \
		--ignore=tests/test_two_machines.py --ignore=tests/test_faults.py

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration"

bench: install
	$(BIN)/python bench/ingest.py --json
	$(BIN)/python bench/gan_step.py --width 0.125 --json
	$(BIN)/python bench/gan_step.py --width 0.25 --json
	$(BIN)/python bench/generate.py --json
	$(BIN)/python bench/protocol.py --json
	$(BIN)/python bench/predict.py --json

clean:
	rm -rf $(VENV) var .pytest_cache
