"""The evaluation record of the champion: what is deployed now, and how it scored, item by
item, on the evaluation sets. `qpbot gate` compares a candidate with it and, with
`--accept`, writes the candidate's record in its place. No Dagster here.

One JSON file (QPBOT_GATE_CHAMPION, by default `$QPBOT_HOME/index/CHAMPION_SCORES.json`,
beside the promoted pointer), written like the pointer: a temporary file renamed over the
old one, so a reader never sees half a record. Scores are keyed by evaluation set and
question id (a hash of the question's text), never by paths or document ids of one
machine, so a record made on one machine can judge a candidate built on another (CI).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qpbot_serving.object_store import write_json_atomic

RECORD_FORMAT = 1


@dataclass(frozen=True)
class Deployment:
    """What would be served: the code, the embedder, the index, the prompt, the answers."""

    code: str | None  # git commit, "+dirty" when the checkout has uncommitted changes
    embedding_model: str
    index: str  # table@version
    documents: int
    chunks: int
    prompt_version: str
    prompt_sha256: str  # of the prompt's wording and layout
    answer_mode: str
    generator: str | None  # None when answers are quoted (no model is called)
    answer_policy: dict = field(default_factory=dict)
    embedding_backend: str | None = None  # torch, onnx, onnx-int8


@dataclass(frozen=True)
class EvaluationRecord:
    """Per-item scores {metric: {"set/item": score}} of one deployment, and the questions."""

    recorded_at: str
    deployment: Deployment
    scores: dict[str, dict[str, float]]
    questions: dict[str, str]  # "set/item" -> the question's text, to name regressions
    sets: dict[str, list[str]]  # {"retrieval": [set names], "answers": [set names]}
    format: int = RECORD_FORMAT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> EvaluationRecord:
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"record format {data.get('format')!r}, expected {RECORD_FORMAT}")
        return cls(**{**data, "deployment": Deployment(**data["deployment"])})


def read_record(path: Path) -> EvaluationRecord | None:
    """The record at `path`, None when there is none. Raises ValueError for a file that is
    not a record."""
    if not path.is_file():
        return None
    try:
        return EvaluationRecord.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as problem:
        raise ValueError(f"{path} is not an evaluation record: {problem}") from problem


def write_record(path: Path, record: EvaluationRecord) -> None:
    write_json_atomic(path, record.to_json())
