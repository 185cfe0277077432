"""The read side: the answer service over the promoted index. It imports nothing of
`qpbot_assets` or Dagster (tests/test_architecture.py); the contracts both sides share
live here (`settings`, `state`, `index`, `document_store`, `embedding`)."""
