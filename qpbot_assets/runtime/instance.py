"""Points Dagster at the instance for a QPBOT_HOME, from environment settings alone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from qpbot_serving.settings import QpbotSettings

DAGSTER_HOME_DIR = Path(__file__).resolve().parents[2] / "dagster_home"
DAGSTER_EVENT_BATCH_SIZE = 1000
PROCESS_TAG = "qpbot/process"  # host:pid:start time of the process executing a run in-process


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


def process_tags() -> dict[str, str]:
    """Tags for a run this process executes in-process, naming the process (see below)."""
    me = psutil.Process()
    return {PROCESS_TAG: f"{socket.gethostname()}:{me.pid}:{me.create_time()}"}


def fail_runs_of_dead_processes(instance) -> list[str]:
    """Marks failed the in-process runs whose process on this host is gone, and frees their
    pool slots; returns their run ids.

    A killed `qpbot ingest` leaves its run STARTED and, when it was writing the index,
    holding the one slot of the search_index pool: every later run would wait for that slot
    forever. (Runs the daemon launched are the daemon's: its run monitoring frees the slots
    of runs that ended, see dagster.yaml.)
    """
    import dagster as dg

    in_progress = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    failed = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=in_progress)):
        run = record.dagster_run
        owner = run.tags.get(PROCESS_TAG)
        if owner is None or _is_alive(owner):
            continue
        instance.report_run_failed(run, message=f"The process that ran it ({owner}) is gone.")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed


def _is_alive(owner: str) -> bool:
    """True unless `owner` (a PROCESS_TAG value) names a process of this host that ended."""
    host, pid, started = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        return psutil.Process(int(pid)).create_time() == float(started)
    except psutil.NoSuchProcess:
        return False
