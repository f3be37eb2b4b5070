# Two entry points: `make demo` and `make test`. Both bootstrap the virtualenv from nothing.
#
# Installs are reproducible: `.venv` is synced from uv.lock (`uv sync --locked`, which fails when
# the lock does not match pyproject.toml: run `make lock` after changing a dependency). uv itself
# is pip-installed at a pinned version into .cache/uv-tool; no Python is ever downloaded.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9
UV_HOME := .cache/uv-tool
UV := $(UV_HOME)/bin/uv
UV_STAMP := $(UV_HOME)/.uv-$(UV_VERSION)
export UV_PYTHON_DOWNLOADS := never
# The suite starts a thousand Python processes (`strangler serve`, its workers and comparers,
# the CLI): each must find its modules compiled, or it compiles every one it imports again
# (PYTHONDONTWRITEBYTECODE=1, set in some CI images, cost a third of the suite's CPU time).
# The venvs are compiled when installed; this tree's own modules on first import.
export UV_COMPILE_BYTECODE := 1
unexport PYTHONDONTWRITEBYTECODE
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
FAST := -m "not slow and not unleash and not prometheus and not browser and not helm and not postgres"
# pytest-xdist workers per test run: a test waits for its subprocesses, servers and sleeps about
# a third of its time, so more workers than cores pay. In `make test` each extra tier has
# TEST_EXTRA_WORKERS beside the whole suite's TEST_WORKERS (the suite has most of the work: the
# two end about together); TEST_WORKERS=1 runs every tier serially.
TEST_WORKERS ?= 4
TEST_EXTRA_WORKERS ?= 2
xdist = $(if $(filter-out 0 1,$(1)),-p xdist -n $(1) --dist loadgroup)
XDIST = $(call xdist,$(TEST_WORKERS))
XDIST_EXTRA = $(call xdist,$(or $(EXTRA_WORKERS),$(TEST_WORKERS)))
# The Docker image's Python (its `ARG PYTHON_VERSION`): the fast tier runs on it too, unless it
# is the version of $(PY), on which the whole suite has run.
IMAGE_PY := $(shell sed -n 's/^ARG PYTHON_VERSION=//p' Dockerfile)
PY_VERSION := $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
IMAGE_VENV := .cache/venv-py$(IMAGE_PY)
# The lowest versions pyproject.toml allows for each direct dependency, on $(PY).
LOWEST_VENV := .cache/venv-lowest

.PHONY: demo test test-suite test-fast test-durations test-image-python test-lowest lint lock lock-upgrade wheel bench venv deps clean schema ext

$(UV_STAMP):
	@test -x $(UV_HOME)/bin/python || $(PY) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@touch $@

$(STAMP): pyproject.toml uv.lock | $(UV_STAMP)
	$(UV) sync -q --locked --python $(PY)
	@touch $(STAMP)

venv: $(STAMP)

# The compiled data plane (setup.py, issue 29): rebuilt in place when its sources changed since
# the last build (an extension older than its .py is not used: proxy/dataplane/__init__.py).
# Without a C compiler the build warns and the pure-Python data plane runs.
EXT_SRC := setup.py $(wildcard proxy/dataplane/*.pxd) \
	$(patsubst %,proxy/dataplane/%.py,basics exchange server upstream recorder inventory table pipeline mirror)
EXT_STAMP := $(VENV)/.ext-stamp
$(EXT_STAMP): $(STAMP) $(EXT_SRC)
	$(UV) pip install -q --python $(BIN)/python --no-deps --reinstall-package strangler -e .
	@$(BIN)/strangler --version
	@touch $@

ext: $(EXT_STAMP)

demo: venv
	$(BIN)/strangler demo

# System packages and real servers the test tiers use (nginx, Prometheus, Chromium, Unleash).
deps: venv
	scripts/install-test-deps

# The test servers' installs (deps) beside the compiled data plane's build (ext), lint, then side
# by side: the whole suite on $(PY) (TEST_WORKERS pytest-xdist workers) and the fast tier on the
# lowest versions allowed, and on the image's Python when that is another version than $(PY)'s
# (TEST_EXTRA_WORKERS each); each tier's output is printed whole when it ends. Tests that measure
# latency (`alone`) run while no test of any tier runs (tests/alone.py); each tier hands out its
# own range of ports (tests/support.py free_port). `make test EXTRA=` runs the whole suite only.
# The data plane: the whole suite and the image's Python run it compiled (when a C compiler is
# there), the lowest versions run it as pure Python (STRANGLER_NO_EXTENSIONS=1).
EXTRA ?= $(if $(filter $(IMAGE_PY),$(PY_VERSION)),,test-image-python) test-lowest
TIERS = test-suite $(strip $(EXTRA))
test: venv
	@$(MAKE) --no-print-directory -j2 --output-sync=target deps ext
	@$(MAKE) --no-print-directory lint
	@$(if $(filter $(IMAGE_PY),$(PY_VERSION)),echo "The image's Python $(IMAGE_PY) is $(PY)'s version: the whole suite runs on it.")
	@mkdir -p .cache/test-alone
	@STRANGLER_TEST_ALONE_DIR=$(CURDIR)/.cache/test-alone $(MAKE) --no-print-directory -k \
		-j$(words $(TIERS)) --output-sync=target $(TIERS) \
		EXTRA_WORKERS=$(if $(filter-out 0 1,$(TEST_WORKERS)),$(TEST_EXTRA_WORKERS),1)

test-suite: export STRANGLER_TEST_PORTS := 10000-18999
test-suite: venv ext
	$(PYTEST) $(XDIST)

test-fast: venv ext
	$(PYTEST) $(XDIST) $(FAST)

# tests/durations.txt (the order pytest-xdist starts the tests in) from a serial run.
test-durations: deps ext
	-$(PYTEST) --junitxml=.cache/durations.xml
	$(BIN)/python -m tests.durations .cache/durations.xml >tests/durations.txt

# The fast tier on the Docker image's Python, installed from the same lock.
test-image-python: export STRANGLER_TEST_PORTS := 19000-25999
test-image-python: $(UV_STAMP)
	@py="$$(scripts/find-python $(IMAGE_PY))" || { echo "Python $(IMAGE_PY) (the Docker image's) not found: install it (pyenv install $(IMAGE_PY))" >&2; exit 1; }; \
	UV_PROJECT_ENVIRONMENT=$(IMAGE_VENV) $(UV) sync -q --locked --python "$$py"
	$(IMAGE_VENV)/bin/python -m pytest -q -p no:cacheprovider $(XDIST_EXTRA) $(FAST)

# The fast tier with every direct dependency at the floor pyproject.toml states (uv's
# lowest-direct resolution; their own dependencies newest), test tools as locked.
test-lowest: export STRANGLER_TEST_PORTS := 26000-32767
test-lowest: $(UV_STAMP)
	STRANGLER_NO_EXTENSIONS=1 scripts/test-lowest $(UV) $(PY) $(LOWEST_VENV) $(XDIST_EXTRA) $(FAST)

# Rewrite uv.lock from pyproject.toml: new or changed dependencies resolved, every other pin
# kept. `make lock-upgrade` moves every pin to the newest release pyproject.toml allows.
lock: $(UV_STAMP)
	$(UV) lock

lock-upgrade: $(UV_STAMP)
	$(UV) lock --upgrade

# dist/strangler-<version>-py3-none-any.whl (with LICENSE), to install where there is no clone.
wheel: $(UV_STAMP)
	$(UV) build -q --wheel -o dist

# Rewrite docs/routes.schema.json and the Helm chart's config schema from the typed model.
schema: venv
	$(BIN)/python -m proxy.config.schema --write

# ruff, and deptry: every import declared (proxy/ and shadow/ against `dependencies`, tests/
# and bench/ against the dev group too), no declared runtime dependency unused.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/deptry proxy shadow --no-ansi
	$(BIN)/deptry tests bench --no-ansi --exclude '(^|/)\.(venv|cache)' -kf proxy -kf shadow \
		-kf tests -kf bench --ignore DEP002,DEP004

bench: deps
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .strangler build dist *.egg-info $(IMAGE_VENV) $(LOWEST_VENV)
	rm -f proxy/dataplane/*.so proxy/dataplane/*.c
