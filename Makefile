# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision first, pinned to the builds this project is tested with (pip finds them locally here).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Extras that cap Pillow below 13 (gradio for `inat-zoo app`, trackio) live in a second venv layered over the first:
# its own site-packages (gradio, trackio, Pillow 12) come before the core venv's, which it reads through a .pth file.
# Their tests, and the data tests again (the Pillow-dependent decode paths on Pillow 12), run there.
EXTRAS_VENV ?= .venv-extras
XPY := $(EXTRAS_VENV)/bin/python
XSTAMP := $(EXTRAS_VENV)/.installed
CORE_EXTRAS := test,onnx,tensorboard,mlflow,postgres
OVERLAY_EXTRAS := "gradio>=5,<7" "gradio_client>=1" "trackio>=0.2" "Pillow<13"
PILLOW12_TESTS := tests/test_data_fast_decode.py tests/test_data_libjpeg_region.py tests/test_data_transforms.py \
	tests/test_data_loader.py tests/test_data_checks_pillow.py tests/test_predict.py

.PHONY: install install-extras demo test lint bench clean

$(STAMP): pyproject.toml setup.py inat_zoo/data/_libjpeg_region.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(CORE_EXTRAS)]"
# W&B's open-source sweeps engine (tests/test_sweep_wandb_agent.py feeds its proposals to the agent path): sweeps 0.3.0
# pins numpy==1.26.4, which we must not take, so it goes in without its pins, and its real dependencies after it.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "sweeps==0.3.0"
	$(PY) -m pip install -q --disable-pip-version-check jsonref jsonschema scipy scikit-learn
	touch $(STAMP)

$(XSTAMP): $(STAMP)
	test -x $(XPY) || $(PYTHON) -m venv $(EXTRAS_VENV)
	$(PY) -c "import site, sys; print('import site; site.addsitedir(%r)' % site.getsitepackages()[0])" \
		> "$$($(XPY) -c 'import site; print(site.getsitepackages()[0])')/00-core-venv.pth"
	$(XPY) -m pip install -q --disable-pip-version-check $(OVERLAY_EXTRAS)
	touch $(XSTAMP)

install: $(STAMP)

install-extras: $(XSTAMP)

demo: $(STAMP)
	$(VENV)/bin/inat-zoo demo

test: $(STAMP) $(XSTAMP)
	$(PY) -m ruff check inat_zoo tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not extras_env"
	$(XPY) -m pytest -q -p no:cacheprovider \
		$$(ls $(PILLOW12_TESTS) 2>/dev/null) $$(grep -l "pytest.mark.extras_env" tests/test_*.py)

lint: $(STAMP)
	$(PY) -m ruff check inat_zoo tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m ruff format --check inat_zoo tests bench

bench: $(STAMP)
	$(PY) bench/data_pipeline.py
	$(PY) bench/freeze_speed.py
	$(PY) bench/trainer_overhead.py

clean:
	rm -rf $(VENV) $(EXTRAS_VENV) .pytest_cache .ruff_cache
