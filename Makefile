# clipblind: `make demo` runs the pipeline offline on a generated corpus; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARCH := $(shell uname -m)
# torch and torchvision are pinned per architecture (open_clip needs a matching torchvision).
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: env demo test lint clean-data labelstudio

# pip here prints a warning per package for this machine's local index; show the log only on failure.
PIP_QUIET = > $(VENV)/pip.log 2>&1 || { grep -v "WARNING: Location" $(VENV)/pip.log; exit 1; }

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH) $(PIP_QUIET)
	$(PIP) install -q -c .ci/constraints.txt -e ".[pipeline,annotation,ray,test]" $(PIP_QUIET)
	$(PY) -c "import torch, torchvision, open_clip, transformers, faiss, pyarrow, webdataset, dvc, datasets" 
	touch $@

env: $(VENV)/.installed  ## create the virtual environment and install clipblind

demo: env  ## generate the sample corpus and run the whole pipeline (dvc repro) offline; a clean clone stays clean (.ci/run)
	@echo "clipblind demo: RANDOMLY INITIALISED encoders (no model hub offline); thresholds are the demo's own (params.yaml)."
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro
	@PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pipeline.commands.status

LS_VENV ?= .venv-labelstudio

# Label Studio pins its own dependencies (pyarrow<25, Django 5.2): it gets a virtualenv of its own.
$(LS_VENV)/.installed: annotation/labelstudio-requirements.txt
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q -r annotation/labelstudio-requirements.txt > $(LS_VENV)/pip.log 2>&1 || { tail -20 $(LS_VENV)/pip.log; exit 1; }
	$(LS_VENV)/bin/python -c "import label_studio; print('label-studio', label_studio.__version__)"
	touch $@

labelstudio: $(LS_VENV)/.installed  ## build Label Studio's own virtualenv (.venv-labelstudio/)

test: env labelstudio lint  ## install what the tests need, lint, and run the whole suite
	$(PY) -m pytest -q

lint: env  ## ruff and mypy (configured in pyproject.toml)
	$(VENV)/bin/ruff check pipeline annotation tests
	$(VENV)/bin/mypy

clean-data:  ## remove pipeline outputs (DVC cache stays)
	rm -rf data metrics

.PHONY: bench-gpu
# Exit codes: 0 checks passed, 1 a check failed, 3 no CUDA device (nothing ran).
bench-gpu: env  ## on a CUDA machine: embed stage and exact search on the GPU, checked against the CPU path (< 10 min)
	$(PY) -m pipeline.commands.bench gpu
