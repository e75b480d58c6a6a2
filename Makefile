# Two commands on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv (python3 -m venv + pip install -e '.[train,dev]') on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.leukedge-installed
DEMO_OUT ?= demo-out

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/leukedge demo --out $(DEMO_OUT)

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
test: $(STAMP)
	@$(PY) -m pytest -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$rc

# The same without the tests marked slow (training, big-model exports): a quick check while editing.
test-fast: $(STAMP)
	@$(PY) -m pytest -q -ra -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$rc

# Style, types, and the floors of the package (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check leukedge tests benchmarks
	$(VENV)/bin/ruff format --check leukedge tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
