# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: install demo test lint format images

install:
	@VENV=$(VENV) bash scripts/install.sh

demo: install
	$(VENV)/bin/ctfm demo --out $(DEMO_OUT)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# The baseline container image and its tarballs (build/images/baseline_{lp,eao}.tar.gz), built offline.
images:
	bash src/ctfm/extract/baseline_image/build_images.sh

lint: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
