# Set-up commands (README): `make repro` runs the pipeline, `make test` the tests.
# Both create .venv if missing and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands call `python`: put the project's environment first on PATH.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: install repro test lint method-gain bench gpu-check smoke report plots

install: $(INSTALLED)

$(INSTALLED): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# `make repro PROFILE=gta5_cityscapes` first makes profiles/<PROFILE>.yaml the params.
repro: $(INSTALLED)
ifdef PROFILE
	cp profiles/$(PROFILE).yaml params.yaml
endif
	$(RUN) dvc repro

test: $(INSTALLED)
	$(RUN) python -m pytest -q

# One self-contained HTML file of the metrics and every plot of `dvc plots show`,
# rendered offline (README, "Looking at the results").
report: $(INSTALLED)
	$(RUN) python -m intrada.report --out report.html

# `dvc plots show` with the Vega libraries inlined: its page draws without a network.
plots: $(INSTALLED)
	$(RUN) python -m intrada.report --offline-template .dvc/tmp/offline_plots.html
	$(RUN) dvc plots show --html-template .dvc/tmp/offline_plots.html

lint: $(INSTALLED)
	$(RUN) ruff check . && $(RUN) ruff format --check .

# Seeds 0-5, each with its controls (source-only trained as long as the pipeline, intra
# without its adversarial term, the target-supervised oracle) and the bootstrap noise
# table, two seeds at a time on one thread each: about 2 hours on 2 CPU cores. The lambda
# sweep: `python -m benchmarks.method_gain --lambdas 0.33 0.67 1.0`.
method-gain: $(INSTALLED)
	$(RUN) python -m benchmarks.method_gain --lambdas --jobs 2

# Speed: training step vs reference-style loop, inference overhead, ranking, no-op repro.
bench: $(INSTALLED)
	$(RUN) python -m benchmarks.speed

# The GPU check (README, "GPU check"): correctness, speed and throughput of the CUDA
# paths; on a machine without a GPU the CPU rows of the embedded benchmark's settings.
gpu-check: $(INSTALLED)
	$(RUN) python -m benchmarks.gpu_check

# A profile at the datasets' true sizes on fixture trees, through `dvc repro` in a
# throw-away copy (README, "Smoke run"): `make smoke PROFILE=synthia_cityscapes`.
smoke: $(INSTALLED)
	$(RUN) python -m benchmarks.smoke --profile $(or $(PROFILE),gta5_cityscapes)
