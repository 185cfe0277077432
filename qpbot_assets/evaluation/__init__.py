"""Scoring what would be deployed: BEIR corpora indexed for evaluation, the deployment
gate and the champion's evaluation record. No Dagster here."""
