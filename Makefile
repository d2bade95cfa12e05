# make test / make demo each set up .venv from nothing (Python 3.10+ as $(PYTHON)).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test test-quick test-matrix lint demo bench clean screenshots

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "cloaca-celery needs Python 3.10 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,redis]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check cloaca_celery django_cloaca tests example_project benchmarks noxfile.py
	$(BIN)/mypy cloaca_celery

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@echo "--- django_cloaca again, on PostgreSQL ---"
	CLOACA_TEST_DJANGO_DB=postgresql $(BIN)/python -m pytest tests/djangoapp tests/contract -k "django or not contract" $(PYTEST_ARGS)
	DJANGO_SETTINGS_MODULE=tests.django_project.settings $(BIN)/python -m django makemigrations --check --dry-run django_cloaca

# What needs no running worker, broker or browser, in two pytest processes: the unit tests, the store
# contract suite on SQLite, the `celery cloaca` CLI, the Django app (admin, models) and the docs pages,
# but for the few tests marked slow (`make test` runs everything).
test-quick: $(STAMP)
	CLOACA_TEST_BACKENDS=sqlite $(BIN)/python -m pytest -n 2 -m "not slow" tests/unit tests/contract \
		tests/cliapp tests/djangoapp tests/docs --ignore=tests/djangoapp/test_browser.py $(PYTEST_ARGS)

# Retake the admin pictures of docs/django.md with the real-browser test (make test never writes them).
screenshots: $(STAMP)
	CLOACA_REFRESH_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/djangoapp/test_browser.py

# The version matrix (noxfile.py): unit, store contract and smoke tests on Python 3.10-3.13 and on
# the oldest and newest allowed dependencies, each in a fresh uv venv under .nox/. The
# interpreters come from pyenv. NOX_ARGS="-t ci" runs only the oldest and the newest combination.
test-matrix: $(STAMP)
	$(BIN)/nox --error-on-missing-interpreters $(NOX_ARGS)

demo: $(STAMP)
	$(BIN)/python example_project/run_demo.py

# Ratio benchmarks against bare Celery (Redis and PostgreSQL needed); rewrites docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --size full

clean:
	rm -rf $(VENV) .nox .cloaca build dist *.egg-info
