# Tuneboard: `make dev` sets everything up and starts the dashboard with a worker and a demo run;
# `make test` runs every test. Both work on a fresh clone of a machine with Python 3.11+ alone: where no PostgreSQL or
# Redis answers (and DATABASE_URL / REDIS_URL are unset) they start their own from wheels (dashboard/embedded.py).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_WORKERS ?= 3
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: install dev test browser gpu clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU torch first (a bare `torch` would pull GBs of CUDA); the constraint keeps it through what follows.
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q "torch>=2.4,<2.15"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps "unsloth==2026.10.9" "unsloth-zoo==2026.10.9"
	# pip's torchvision does not load with a CPU torch and breaks every transformers import.
	$(PIP) uninstall -q -y torchvision xformers 2>/dev/null || true
	# llama.cpp for the GGUF export's quantization and the tests that load its files: built from PyPI's sdist (8.5 min
	# on 2 cores, docs/benchmarks.md; pip caches the wheel) with only the library, and --no-deps so that numpy and jinja2
	# stay as pinned above (its one other dependency is diskcache).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q --no-deps "llama-cpp-python==0.3.36" "diskcache>=5.6.1"
	# Real chat templates and tokenizers of model families for the families tests, and llama.cpp's own GGUF converters
	# for the export (llama.cpp's copies, from the same sdist on PyPI).
	$(PY) scripts/family_assets.py $(VENV)/share/llama-cpp-python
	touch $@

install: $(VENV)/.installed

dev: install
	$(PY) -m dashboard.dev $(DEV_ARGS)

# The whole product on a machine with an NVIDIA GPU: its own venv over the machine's CUDA torch (scripts/gpu-box.sh).
gpu:
	bash scripts/gpu-box.sh $(DEV_ARGS)

browser:
	@bash scripts/chromium.sh

# The test session's own embedded servers (if it needs any) keep their data in var/test, apart from make dev's.
test: install browser
	$(VENV)/bin/lint-imports
	$(PY) -m dashboard.embedded --data var/test --throwaway -- $(PY) -m pytest -n $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) var
