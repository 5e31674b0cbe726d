# Two commands on a fresh machine:  make demo  ·  make test
# Both create .venv and install the gateway into it first (once; again when
# pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo keeps everything it writes inside the checkout unless you say otherwise.
export GATEWAY_HOME ?= $(CURDIR)/.demo-home

.PHONY: demo test lint docs golden bench bench-imaging bench-store serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)            ## run the main job on the demo network (seeds/)
	$(BIN)/gateway demo

test: $(STAMP)            ## the whole test suite
	$(BIN)/python -m pytest -q

lint: $(STAMP)            ## ruff on everything, mypy (strict) on gateway/
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy

docs: $(STAMP)            ## regenerate the generated parts of docs/ (error codes)
	$(BIN)/python -c 'import gateway.errors as e; print(e.errors_markdown(), end="")' > docs/errors.md

golden: $(STAMP)          ## regenerate tests/golden/**/*.expected.json; review with git diff
	$(BIN)/python -m tests.golden.regenerate

bench: $(STAMP)           ## HL7 v2 conversion benchmark against peer libraries (DICOM: bench-imaging)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/bench_convert.py --out bench/RESULTS.md

bench-imaging: $(STAMP)   ## DICOM headers → ImagingStudy against pydicom and dicom2fhir
	$(BIN)/python bench/bench_imaging.py --setup-peers --out bench/RESULTS.md

bench-store: $(STAMP)     ## message store: 1M-row look-ups, MLLP intake (PostgreSQL too: --pg URL)
	$(BIN)/python bench/bench_store.py --out bench/RESULTS.md

serve: $(STAMP)           ## the HTTP API on 127.0.0.1:8080
	$(BIN)/gateway serve

clean:
	rm -rf $(VENV) .demo-home .pytest_cache .mypy_cache .ruff_cache
