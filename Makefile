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

# constraints.txt pins torch to the CPU build that lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA
# build. An editable install skips the package's data files, so the kernelspec and the switch that enables the server
# extension in every Jupyter server of the venv are put where a wheel would put them.
SERVER_CONFIG := jupyter-config/jupyter_server_config.d/notebookos.json
$(STAMP): $(PY) pyproject.toml constraints.txt $(SERVER_CONFIG)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -m notebookos.kernels.kernelspec --sys-prefix
	install -D -m 0644 $(SERVER_CONFIG) $(VENV)/etc/jupyter/jupyter_server_config.d/notebookos.json
	touch $(STAMP)

install: $(STAMP)

# The JupyterLab extension (labextension/): its bundle in labextension/prebuilt/ is committed, so installing needs no
# node. An editable install skips data files, so the venv's labextensions folder gets a link to the bundle (a rebuild
# shows at the next page load). `make labextension` rebuilds it: jlpm (from the venv) installs the npm dependencies,
# tsc compiles src/, and JupyterLab's builder writes labextension/prebuilt/ (node 20.19+ and the npm registry). The
# package build runs the same `jlpm build:prod` where the bundle is missing, or NOTEBOOKOS_BUILD_LABEXTENSION=1 asks
# (setup.py).
LABEXT_LINK := $(VENV)/share/jupyter/labextensions/notebookos
$(LABEXT_LINK): | $(STAMP)
	install -d $(dir $@)
	ln -sfn $(CURDIR)/labextension/prebuilt $@
install run test: $(LABEXT_LINK)
.PHONY: labextension
labextension: $(STAMP)
	cd labextension && export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" && jlpm install && jlpm build:prod

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

# configurable-http-proxy, the proxy JupyterHub runs (tests/hub), from npm into a project-local folder; only where it
# is missing and node is there (without node the Hub test skips, saying so).
HUB_TOOLS := .hub-tools
.PHONY: hub-tools
test: hub-tools
hub-tools:
	@command -v npm >/dev/null || { echo "npm not found: tests/hub will skip"; exit 0; }; \
	test -x $(HUB_TOOLS)/node_modules/.bin/configurable-http-proxy || \
	  npm install --silent --no-fund --no-audit --prefix $(HUB_TOOLS) configurable-http-proxy@5

run: $(STAMP)
	$(VENV)/bin/notebookos lab $(ARGS)

# Lint, format check and type check first (seconds): a mistake pyflakes or mypy sees should not wait for a 13-minute
# suite to show.
LINTED := replication kernels gpu_broker server_extension benchmarks tests
test: $(STAMP) system-deps
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	@$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy over the packages ([tool.mypy]; 25 to 40 s the first time, 2 s with its cache in .mypy_cache/). They install as
# notebookos.<folder> and import each other relatively, which mypy cannot map from the folders, so it reads them
# through links in .mypy-tree/notebookos/; sed turns the paths it prints back into the repository's, for the editor.
TYPED := replication kernels gpu_broker server_extension
.PHONY: typecheck
typecheck: $(STAMP)
	@mkdir -p .mypy-tree/notebookos && for d in $(TYPED); do ln -sfn ../../$$d .mypy-tree/notebookos/$$d; done
	@echo "mypy $(TYPED)"; out=$$($(VENV)/bin/mypy 2>&1); rc=$$?; \
	  printf '%s\n' "$$out" | sed 's|^\.mypy-tree/notebookos/||'; exit $$rc

# Measurements, not tests: each prints its table and writes benchmarks/results/.
bench: $(STAMP)
	$(PY) benchmarks/cell_latency.py
	$(PY) benchmarks/simulate_june.py
	$(PY) benchmarks/gpu_sharing.py
	$(PY) benchmarks/multihost.py
	$(PY) benchmarks/footprint.py
	$(PY) benchmarks/scale.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy-tree .mypy_cache
