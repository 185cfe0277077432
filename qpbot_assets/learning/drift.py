"""Embedding drift: is what comes in now unlike what came before? (pure logic, no Dagster)

`embedding_drift` compares a current window of embeddings with a reference window in one
evidently report and sums it up in two numbers:

- drift share: the share of embedding dimensions whose distribution changed, each tested
  on its own by evidently's per-column drift test (two-sample Kolmogorov-Smirnov at
  p < 0.05 up to 1,000 rows). Same-distribution windows stay near 0.05, the test's false
  positive rate; a change of topic moves most dimensions. QPBOT_DRIFT_THRESHOLD is
  compared with this number.
- drift score: evidently's embeddings drift score, the ROC AUC of a classifier trained to
  tell reference rows from current ones: 0.5 means it cannot, 1.0 that it always can.

evidently is slow (its per-column tests and the t-SNE picture in the HTML take tens of
seconds for a few hundred rows), so each side is sampled to at most `sample` rows.

`split_windows` decides which rows are reference and which are current, from the time
each row arrived and the cutoff recorded by the last report that computed drift (see its
docstring for why the windows work this way).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class DriftSummary:
    drift_share: float  # share of dimensions that drifted, 0..1
    drift_score: float  # ROC AUC of the reference-vs-current classifier, 0.5 = no drift
    drifted_columns: int  # dimensions that drifted
    columns: int  # dimensions tested
    n_reference: int  # rows compared (after sampling)
    n_current: int
    available_reference: int  # rows there were to sample from
    available_current: int

    def as_dict(self) -> dict:
        return asdict(self)


def sample_rows(rows: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `sample` of `rows` rows, without repeats, in their original order."""
    if rows <= sample:
        return np.arange(rows)
    return np.sort(rng.choice(rows, size=sample, replace=False))


def embedding_drift(
    reference: np.ndarray,
    current: np.ndarray,
    sample: int = 300,
    seed: int = 0,
    html_path: Path | None = None,
    name: str = "embedding",
) -> DriftSummary:
    """Runs evidently's embeddings drift and drifted-dimensions metrics on (samples of) two
    (rows, dimension) arrays; writes the report's HTML to `html_path` when given. `name` is
    what the report calls the embedding."""
    from evidently import DataDefinition, Dataset, Report  # heavy: only when a report runs
    from evidently.metrics import DriftedColumnsCount, EmbeddingsDrift

    reference = np.asarray(reference, dtype=np.float32)
    current = np.asarray(current, dtype=np.float32)
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"expected two (rows, dimension) arrays of one dimension, got {reference.shape} "
            f"and {current.shape}"
        )
    if len(reference) < 2 or len(current) < 2:
        raise ValueError("each side needs at least two rows")
    rng = np.random.default_rng(seed)
    ref = reference[sample_rows(len(reference), sample, rng)]
    cur = current[sample_rows(len(current), sample, rng)]

    columns = [f"dim_{i:04d}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=columns, embeddings={name: columns})

    def dataset(vectors: np.ndarray):
        frame = pd.DataFrame(vectors.astype(np.float64), columns=columns)
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report([EmbeddingsDrift(embeddings_name=name), DriftedColumnsCount(columns=columns)])
    snapshot = report.run(dataset(cur), dataset(ref))
    values = {
        m["config"]["type"].rsplit(":", 1)[-1]: m["value"] for m in snapshot.dict()["metrics"]
    }
    drifted = values["DriftedColumnsCount"]
    if html_path is not None:
        html_path = Path(html_path)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = html_path.with_name(html_path.name + ".tmp")
        snapshot.save_html(str(tmp))
        os.replace(tmp, html_path)
    return DriftSummary(
        drift_share=float(drifted["share"]),
        drift_score=float(values["EmbeddingsDrift"]),
        drifted_columns=int(drifted["count"]),
        columns=len(columns),
        n_reference=len(ref),
        n_current=len(cur),
        available_reference=len(reference),
        available_current=len(current),
    )


@dataclass(frozen=True)
class Windows:
    """Which rows a report compares, and the cutoff the next report starts from."""

    reference: np.ndarray  # boolean mask over the rows
    current: np.ndarray  # boolean mask over the rows
    compute: bool  # False: too few rows on a side, `reason` says which
    reference_until: str | None  # the cutoff this report used (ISO time, UTC)
    current_until: str | None  # the newest row's time
    next_cutoff: str | None  # what the next report's `cutoff` should be
    reason: str  # why no drift is computed; empty when it is


def split_windows(times: Sequence, cutoff: str | None, min_rows: int) -> Windows:
    """Reference = rows that arrived up to `cutoff`, current = rows after it.

    `cutoff` is the newest arrival time seen by the last report that computed drift, so
    each report compares what arrived since then with everything before, and no row is
    ever in two current windows: a drift signal is raised once for the data that caused
    it, not again by every later report (nor by the report that follows a retraining).
    The cutoff moves on only when drift is computed, so new rows that are too few to
    compare wait and add up. With no cutoff yet, or fewer than `min_rows` rows before it,
    there is nothing to compare with: every row so far becomes the reference.
    """
    stamps = pd.to_datetime(pd.Series(list(times), dtype=object), utc=True)
    rows = len(stamps)
    none = np.zeros(rows, dtype=bool)
    if rows == 0:
        return Windows(none, none, False, cutoff, None, cutoff, "no rows yet")
    latest = _iso(stamps.max())
    if cutoff is None:
        return Windows(
            np.ones(rows, dtype=bool),
            none,
            False,
            None,
            latest,
            latest,
            f"first report: the {rows} rows so far are the reference window; drift is "
            f"computed once {min_rows} newer rows have arrived",
        )
    limit = pd.Timestamp(cutoff)
    limit = limit.tz_localize("UTC") if limit.tzinfo is None else limit.tz_convert("UTC")
    reference = (stamps <= limit).to_numpy()
    current = ~reference
    n_ref, n_cur = int(reference.sum()), int(current.sum())
    if n_ref < min_rows:
        return Windows(
            reference,
            current,
            False,
            cutoff,
            latest,
            latest,
            f"only {n_ref} reference rows (need {min_rows}): all {rows} rows so far become "
            "the reference window",
        )
    if n_cur < min_rows:
        return Windows(
            reference,
            current,
            False,
            cutoff,
            latest,
            cutoff,
            f"{n_cur} rows arrived after {cutoff} (need {min_rows}): waiting for more",
        )
    return Windows(reference, current, True, cutoff, latest, latest, "")


def _iso(stamp: pd.Timestamp) -> str:
    return stamp.tz_convert("UTC").isoformat()
