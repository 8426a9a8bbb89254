# attnlens: `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
OUT ?= out/demo

.PHONY: setup demo test browser-deps bench clean

setup: $(VENV)/.attnlens-installed

# torch first (a torch already in the venv is kept), so the project's `torch` requirement pulls no CUDA wheels
$(VENV)/.attnlens-installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# Real-browser tests need Debian's chromium + chromedriver (installed as root when missing).
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi

demo: setup
	$(PY) -m attnlens.demo --out $(OUT)

test: setup browser-deps
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/record_overhead.py

clean:
	rm -rf $(VENV) out .pytest_cache
