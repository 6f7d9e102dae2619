# idm-facade: `make demo` serves a synthetic municipality, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= sqlite:///var/idm.db
SIZE ?= S
DAYS ?=
SCIM_PORT ?= 8080
LDAP_PORT ?= 3389
LDAPS_PORT ?= 3636

.PHONY: demo test test-dates bench fuzz soak lint os-packages venv venv-runtime clean

# The full set-up (test tools, compiled python-ldap) for tests and benchmarks.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

# Only what serving needs (wheels; nothing to compile, no OS packages): enough for the demo.
venv-runtime: $(VENV)/.runtime

$(VENV)/.runtime: pyproject.toml
	@echo "[make] installing idm-facade and its runtime dependencies into $(VENV) ..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --progress-bar off -e .
	touch $@

# OS tools the tests use as real clients (ldapsearch) and build against (libldap for python-ldap).
os-packages:
	bash scripts/os-packages.sh

demo: venv-runtime
	$(BIN)/idm-facade demo --db $(DB) --size $(SIZE) --scim-port $(SCIM_PORT) \
		--ldap-port $(LDAP_PORT) --ldaps-port $(LDAPS_PORT)

test: os-packages venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# The suite again with the machine's date moved by about 1, 6, 13 and 25 months (libfaketime).
test-dates: os-packages venv
	bash scripts/test-dates.sh $(DAYS)

bench: os-packages venv
	bash scripts/bench-packages.sh
	$(BIN)/python -m bench.run

# Mixed SCIM and LDAP load with a non-reading and a revoked client (SOAK_SECONDS); reports
# memory over time and records lost. Results: RELIABILITY.md.
SOAK_SECONDS ?= 1800
soak: os-packages venv
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

# The fuzz harnesses of tests/test_fuzz.py with many more inputs (FUZZ_EXAMPLES per harness);
# prints how many inputs were tried. Results: RELIABILITY.md.
FUZZ_EXAMPLES ?= 3000
fuzz: os-packages venv
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -s tests/test_fuzz.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache
