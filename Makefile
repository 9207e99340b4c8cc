# snnet-ray: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps test demo demo-stop lint bench clean

# torch first, from this machine's disk (other versions download gigabytes), then the project.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# PostgreSQL and Chromium for the results-service tests (apt; skipped with a reason where impossible).
system-deps:
	bash scripts/system_deps.sh

test: install system-deps
	$(PY) -m pytest

# The main job on the built-in digits data through a local Ray; ends with the table, plot and page.
demo: install
	bash scripts/demo.sh

demo-stop:
	-test -f demo_out/results.pid && kill $$(cat demo_out/results.pid) && rm -f demo_out/results.pid

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf bench/out .pytest_cache
