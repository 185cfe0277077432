"""Running the asset graph outside the daemon: the Dagster instance of a home, its
batching SQLite storage, and the in-process runs behind `qpbot ingest`, `status` and
`rollback`."""
