"""Writing the search index: syncing LanceDB tables with the document store, the embedding
child process, and promotion (the one writer of the index pointers). No Dagster here."""
