# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision first, pinned to the builds this project is tested with (pip finds them locally here).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml setup.py inat_zoo/data/_libjpeg_region.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/inat-zoo demo

test: $(STAMP)
	$(PY) -m ruff check inat_zoo tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check inat_zoo tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m ruff format --check inat_zoo tests bench

bench: $(STAMP)
	$(PY) bench/data_pipeline.py
	$(PY) bench/freeze_speed.py
	$(PY) bench/trainer_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
