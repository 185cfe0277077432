"""Fine-tuning the embedding model on training pairs (sentence-transformers, CPU).

MultipleNegativesRankingLoss over (query, positive, hard negative) triplets: every other
positive and negative in the batch is a negative too, and the judged hard negatives teach
what the retriever got wrong. A pair without a judged negative gets another query's
positive in its place (a random negative), so every row has the same shape.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qpbot_serving.settings import resolve_model_path


@dataclass(frozen=True)
class FineTuneParams:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 0
    shuffle_labels: bool = False  # pairs a query with someone else's positive: a bad model


def triplets(pairs: pd.DataFrame, seed: int = 0, shuffle_labels: bool = False) -> pd.DataFrame:
    """anchor/positive/negative columns from training pairs (the "train" split only).

    `shuffle_labels` breaks the link between queries and their positives on purpose; it
    exists to show that the promotion gate refuses a model trained on noise.
    """
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    rng = random.Random(seed)
    positives = train["positive"].tolist()
    if shuffle_labels:
        rng.shuffle(positives)
    negatives = []
    for number, negative in enumerate(train["negative"]):
        if isinstance(negative, str) and negative and not shuffle_labels:
            negatives.append(negative)
        else:
            others = [p for i, p in enumerate(positives) if i != number] or positives
            negatives.append(rng.choice(others))
    return pd.DataFrame({"anchor": train["query"], "positive": positives, "negative": negatives})


def fine_tune_embedder(
    base_model: str, pairs: pd.DataFrame, output_dir: Path, params: FineTuneParams
) -> dict:
    """Trains a copy of `base_model` (a name or path) on `pairs` and saves it to `output_dir`.

    Returns {"train_loss", "steps", "examples", "seconds"}. Raises ValueError when there is
    nothing to train on.
    """
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    data = triplets(pairs, params.seed, params.shuffle_labels)
    if len(data) < 2:
        raise ValueError(f"{len(data)} training pairs: at least 2 are needed to fine-tune")
    model = SentenceTransformer(resolve_model_path(base_model), device="cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=params.epochs,
            per_device_train_batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            warmup_steps=params.warmup_ratio,  # a float below 1 is a share of the steps
            seed=params.seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate would be its own negative
            save_strategy="no",
            report_to="none",  # MLflow logging is done by the asset, once, with our names
            logging_steps=10,
            use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_pandas(data, preserve_index=False),
            loss=MultipleNegativesRankingLoss(model),
        )
        result = trainer.train()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    return {
        "train_loss": float(result.training_loss),
        "steps": int(result.global_step),
        "examples": len(data),
        "seconds": round(time.perf_counter() - started, 1),
    }
