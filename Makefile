# The two commands of the README: `make run` and `make test`. Both set everything up themselves.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install system-deps bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned to the CPU build that lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m notebookos.kernels.kernelspec --sys-prefix
	touch $(STAMP)

install: $(STAMP)

# Debian packages the browser, Redis and Docker tests use. Installed only where missing, so a warm machine skips apt.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: $(STAMP)
	$(VENV)/bin/notebookos lab $(ARGS)

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Measurements, not tests: each prints its table and writes benchmarks/results/.
bench: $(STAMP)
	$(PY) benchmarks/cell_latency.py
	$(PY) benchmarks/simulate_june.py
	$(PY) benchmarks/gpu_sharing.py
	$(PY) benchmarks/multihost.py

clean:
	rm -rf $(VENV) build *.egg-info
