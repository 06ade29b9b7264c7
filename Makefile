# Set-up commands (README.md): `make repro` runs the pipeline, `make test` the tests.
# Both create .venv if missing and install the pinned requirements first. `make help`
# lists every target with what it does (the text after `##`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands call `python`: put the project's environment first on PATH.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: help install repro test test-faults test-long lint method-gain method-study bench gpu-check smoke report plots evaluate-model

install: $(INSTALLED) ## create .venv and install the pinned requirements (once)

help: ## list the targets, one line each
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# `make repro PROFILE=gta5_cityscapes` first makes profiles/<PROFILE>.yaml the params.
repro: $(INSTALLED) ## run the pipeline (dvc repro); PROFILE=<name> first copies profiles/<name>.yaml to params.yaml
ifdef PROFILE
	cp profiles/$(PROFILE).yaml params.yaml
endif
	$(RUN) dvc repro

test: $(INSTALLED) ## run the test suite (all but the fault-injection matrix and the end-to-end runs)
	$(RUN) python -m pytest -q -m "not faults and not long"

# Kills and failed writes injected into every writing stage of a real `dvc repro`
# (docs/reliability.md): minutes, so apart from `make test`; CI runs it too.
test-faults: $(INSTALLED) ## the fault-injection matrix through dvc repro (several minutes)
	$(RUN) python -m pytest -q -m faults

# Runs of minutes each, apart from `make test` for its time; CI runs all three targets:
# the tiny smoke run (DeepLab-v2 through dvc repro, then a released inter model), the
# method-gain and speed benchmarks' own runs, a lambda sweep through DVC's queue, and
# the GTA5-layout repro over raw trees edited in place (keeps make test under 8 min).
test-long: $(INSTALLED) ## the end-to-end runs: smoke and benchmark scripts, a queued sweep (minutes)
	$(RUN) python -m pytest -q -m long

# One self-contained HTML file of the metrics and every plot of `dvc plots show`,
# rendered offline (docs/plots.md).
report: $(INSTALLED) ## write report.html: metrics and every plot, offline, from the workspace's outputs
	$(RUN) python -m intrada.report --out report.html

# `dvc plots show` with the Vega libraries inlined: its page draws without a network.
plots: $(INSTALLED) ## dvc plots show, drawing offline (dvc_plots/index.html)
	$(RUN) python -m intrada.report --offline-template .dvc/tmp/offline_plots.html
	$(RUN) dvc plots show --html-template .dvc/tmp/offline_plots.html

lint: $(INSTALLED) ## ruff check and ruff format --check
	$(RUN) ruff check . && $(RUN) ruff format --check .

# Seeds 0-5, each with its controls (source-only trained as long as the pipeline, intra
# without its adversarial term, the target-supervised oracle) and the bootstrap noise
# table, two seeds at a time on one thread each (docs/method-study.md). The lambda
# sweep: `python -m benchmarks.method_gain --lambdas 0.33 0.67 1.0`.
method-gain: $(INSTALLED) ## seeds 0-5 with controls and oracle (96 min on 2 cores)
	$(RUN) python -m benchmarks.method_gain --lambdas --jobs 2

# The paper's ablation table with AdvEnt and with AdaptSegNet as the framework, three
# intra rounds, label-free snapshot selection and the two kinds of spread, seeds 0-5
# with the controls and noise, two runs at a time (docs/method-study.md).
method-study: $(INSTALLED) ## ablation tables, rounds, label-free selection, spread (hours on 2 cores)
	$(RUN) python -m benchmarks.method_study --jobs 2

# Speed: training step vs reference-style loop, inference overhead, ranking, no-op repro.
bench: $(INSTALLED) ## speed benchmarks (docs/benchmarks.md)
	$(RUN) python -m benchmarks.speed

# The GPU check (docs/benchmarks.md): correctness, speed and throughput of the CUDA
# paths; on a machine without a GPU the CPU rows of the embedded benchmark's settings.
gpu-check: $(INSTALLED) ## correctness and speed of the CUDA paths (CPU rows without a GPU)
	$(RUN) python -m benchmarks.gpu_check

# A profile at the datasets' true sizes on fixture trees, through `dvc repro` in a
# throw-away copy (docs/smoke-run.md): `make smoke PROFILE=synthia_cityscapes`.
smoke: $(INSTALLED) ## a profile end to end at the datasets' true sizes on fixture files (PROFILE=)
	$(RUN) python -m benchmarks.smoke --profile $(or $(PROFILE),gta5_cityscapes)

# One model file on target-val, nothing trained (docs/released-models.md):
# `make evaluate-model MODEL=/weights/intrada.pth PARAMS=profiles/gta5_cityscapes.yaml`.
evaluate-model: $(INSTALLED) ## evaluate MODEL=<file> on target-val (PARAMS=, DEVICE= optional)
	$(if $(MODEL),,$(error MODEL is missing: make evaluate-model MODEL=<model file>))
	$(RUN) python -m stages.evaluate_model --model $(MODEL) --params $(or $(PARAMS),params.yaml) $(if $(DEVICE),--device $(DEVICE))
