# Two entry points: `make demo` and `make test`. Both bootstrap the virtualenv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench venv deps clean schema

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/strangler demo

# System packages and real servers the test tiers use (nginx, Prometheus, Chromium, Unleash).
deps: venv
	scripts/install-test-deps

test: deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not unleash and not prometheus and not browser and not helm and not postgres"

# Rewrite docs/routes.schema.json and the Helm chart's config schema from the typed model.
schema: venv
	$(BIN)/python -m proxy.config.schema --write

lint: venv
	$(BIN)/ruff check .

bench: deps
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .strangler build *.egg-info
