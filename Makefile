# The README's commands. `make install` is idempotent: it reinstalls only when pyproject.toml changes. pip installs
# torch (it finds a local +cpu wheel where the machine has one), uv the rest: 5.4 s against pip's 36.7 s here (warm caches).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Machines without a GPU get the CPU wheel of torch, never the CUDA build. Set TORCH_INDEX to a PyTorch
# CPU wheel index when your pip has no local copy of the +cpu wheel.
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser test demo bench clean

install: $(STAMP) browser

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),yes)
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
else
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)+cpu" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
endif
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[test,browser]'
	touch $(STAMP)

# The browser of the UI checks and `selfd ui --screenshots`: Debian's chromium, unless one is there already
# (SELFD_CHROMIUM names any Chromium binary). Playwright drives it; nothing is downloaded by Playwright.
browser:
	@if [ -z "$$SELFD_CHROMIUM" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium (browser checks, selfd ui --screenshots)"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	  else echo "no chromium and no apt-get: install Chromium and set SELFD_CHROMIUM to its binary" >&2; fi; \
	fi

test: install
	$(BIN)/python -m pytest -n 3 --durations=10

# The two CPU Figure 3 sweeps, each photographed in the MLflow UI (headless Chromium), then where to look.
# Run again, it keeps what the first run found (`--if-exists continue`): a finished sweep's report is rebuilt and
# nothing is trained, an interrupted one resumes. `make demo STUDIES=studies/again` runs both afresh elsewhere.
STUDIES ?= studies
demo: install
	@mkdir -p $(STUDIES)
	$(BIN)/selfd run search_spaces/fig3_rte_cpu.yaml --study-dir $(STUDIES)/fig3_rte_cpu --if-exists continue | tee $(STUDIES)/demo.log
	$(BIN)/selfd run search_spaces/fig3_boolq_cpu.yaml --study-dir $(STUDIES)/fig3_boolq_cpu --if-exists continue | tee -a $(STUDIES)/demo.log
	$(BIN)/selfd ui $(STUDIES)/fig3_rte_cpu --screenshots | tee -a $(STUDIES)/demo.log
	$(BIN)/selfd ui $(STUDIES)/fig3_boolq_cpu --screenshots | tee -a $(STUDIES)/demo.log
	@echo; echo "Verdicts (test scores, paired over seeds, 95 % CI) and where to look:"
	@grep -E '^(verdict|report|MLflow|screenshot):' $(STUDIES)/demo.log

bench: install
	$(BIN)/python benchmarks/step_overhead.py --json
	$(BIN)/python benchmarks/study_efficiency.py --json
	$(BIN)/python benchmarks/cpu_attention.py --json
	$(BIN)/python benchmarks/cluster_scaling.py --json
	$(BIN)/python benchmarks/lm_teacher_memory.py --json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
