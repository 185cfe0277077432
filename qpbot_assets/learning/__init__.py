"""Pure logic of the learning loop (no Dagster): feedback events, training pairs, fine-tuning,
drift statistics, evaluation sets. The assets under defs/ call these."""
