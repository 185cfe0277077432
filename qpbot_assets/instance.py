"""Points Dagster at the instance for a QPBOT_HOME, from environment settings alone."""

from __future__ import annotations

import os
from pathlib import Path

from qpbot_serving.settings import QpbotSettings

DAGSTER_HOME_DIR = Path(__file__).resolve().parents[1] / "dagster_home"
DAGSTER_EVENT_BATCH_SIZE = 1000


def configure_environment(settings: QpbotSettings) -> None:
    """Sets DAGSTER_HOME (SQLite, or PostgreSQL when QPBOT_DAGSTER_PG_URL is set) and the
    storage directory under QPBOT_HOME, for this process and the ones it starts."""
    os.environ["QPBOT_HOME"] = str(settings.home)
    os.environ["QPBOT_DAGSTER_STORAGE"] = str(settings.dagster_storage_dir)
    # Dagster then hands a run's per-partition events to the storage in batches: one
    # transaction per batch instead of one per (asset, partition) (dagster_storage.py).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(DAGSTER_EVENT_BATCH_SIZE))
    settings.dagster_storage_dir.mkdir(parents=True, exist_ok=True)
    if "DAGSTER_HOME" not in os.environ:
        postgres = bool(os.environ.get("QPBOT_DAGSTER_PG_URL"))
        os.environ["DAGSTER_HOME"] = str(
            DAGSTER_HOME_DIR / "postgres" if postgres else DAGSTER_HOME_DIR
        )


def get_instance(settings: QpbotSettings):
    import dagster as dg

    configure_environment(settings)
    return dg.DagsterInstance.get()
