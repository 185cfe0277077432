"""The write side: the Dagster asset graph that ingests documents, builds and promotes the
search index and learns from feedback.

- `definitions.py` (the code location) and `cli.py` (the `qpbot` command): the entry points.
- `defs/`: Dagster definitions, one folder per domain, autoloaded.
- `documents/`, `indexing/`, `learning/`, `evaluation/`: plain modules the assets call,
  no Dagster (extraction to chunks; LanceDB sync and promotion; feedback, drift and
  fine-tuning; the deployment gate).
- `runtime/`: the Dagster instance of a home and the in-process runs of the CLI.

State that other domains read (which index serves, which embedder ingests, cursors) goes
through `qpbot_serving.state`; this package never reaches into the service.
"""
