"""`qpbot gate`: what would be deployed against the champion's evaluation record, on the
sample documents and sample questions, with the real embedding model and the extractive
answers the service gives by default (no generator needed). The record is a file
(QPBOT_GATE_CHAMPION) or, by default, a pointer on the state store (on S3: moto's server,
as in tests/test_object_storage.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
from conftest import REPO, ingest_into
from test_object_storage import STORAGE_URL, s3, stored_keys  # noqa: F401 (s3: a fixture)

from qpbot_assets.cli import main
from qpbot_assets.evaluation.deployment_gate import compare_with_champion
from qpbot_serving.state import CHAMPION_SCORES, Deployment, EvaluationRecord

SAMPLE_QUESTIONS = REPO / "examples" / "sample_questions.jsonl"


@pytest.fixture(scope="module")
def gate_home(tmp_path_factory, sample_documents) -> dict[str, str]:
    """The sample documents ingested, the sample questions (all answerable, each naming its
    file) and the ten unanswerable ones of more_sample_questions.jsonl configured; returns
    the environment that `qpbot gate` runs with."""
    root = tmp_path_factory.mktemp("gate")
    home = ingest_into(root / "home", sample_documents)
    unanswerable = root / "unanswerable.jsonl"
    lines = (REPO / "examples" / "more_sample_questions.jsonl").read_text().splitlines()
    unanswerable.write_text(
        "".join(
            f"{line}\n" for line in lines if line.strip() and json.loads(line)["answer"] is None
        )
    )
    return {
        "QPBOT_HOME": str(home),
        "QPBOT_EVAL_QA_SETS": json.dumps([str(SAMPLE_QUESTIONS), str(unanswerable)]),
        "QPBOT_GATE_CHAMPION": str(root / "champion.json"),
    }


def use_gate_environment(patch: pytest.MonkeyPatch, gate_home: dict[str, str]) -> None:
    """Only the gate's own settings: nothing from the caller's QPBOT_* variables."""
    keep = {"QPBOT_EMBEDDING_EXPORT_DIR"}  # the tests' one cache of ONNX exports
    for name in [v for v in os.environ if v.startswith("QPBOT_") and v not in keep]:
        patch.delenv(name)
    patch.delenv("DAGSTER_HOME", raising=False)
    for name, value in gate_home.items():
        patch.setenv(name, value)


@pytest.fixture
def gate_env(gate_home, monkeypatch):
    use_gate_environment(monkeypatch, gate_home)
    return gate_home


def run_gate(capsys, *options: str) -> tuple[int, dict]:
    code = main(["gate", "--json", *options])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def champion(gate_home) -> tuple[int, dict, EvaluationRecord]:
    """The first gate of this home, with --accept: (exit code, verdict, the record written)."""
    out = StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out):
        use_gate_environment(patch, gate_home)
        code = main(["gate", "--json", "--accept"])
    written = Path(gate_home["QPBOT_GATE_CHAMPION"]).read_bytes()
    return code, json.loads(out.getvalue()), EvaluationRecord.model_validate_json(written)


def test_first_gate_passes_as_the_baseline_and_records_itself(champion):
    code, verdict, record = champion
    assert code == 0 and verdict["passed"] and verdict["baseline"] and verdict["accepted"]
    assert verdict["reason"].startswith("passed: no champion record")
    assert set(verdict["metrics"]) == {
        "retrieval/hybrid/ndcg@10",
        "retrieval/dense/ndcg@10",
        "answers/answerable_correct",
        "answers/unanswerable_declined",
    }
    # Retrieval: the 20 sample questions name their file; answers: those and 10 unanswerable.
    assert verdict["metrics"]["retrieval/hybrid/ndcg@10"]["items"] == 20
    assert verdict["metrics"]["answers/answerable_correct"]["items"] == 20
    assert verdict["metrics"]["answers/unanswerable_declined"]["items"] == 10
    # Extractive quotes answer nearly every sample question (BENCHMARKS.md, "Answers").
    assert verdict["metrics"]["answers/answerable_correct"]["candidate"] >= 0.8
    assert verdict["metrics"]["retrieval/hybrid/ndcg@10"]["candidate"] >= 0.8
    deployment = verdict["candidate"]
    assert deployment["embedding_model"] == "all-MiniLM-L6-v2"
    assert deployment["embedding_backend"] in ("torch", "onnx", "onnx-int8")
    assert re.fullmatch(r"chunks__all-minilm-l6-v2(-int8)?@v\d+", deployment["index"])
    assert deployment["answer_mode"] == "extractive" and deployment["generator"] is None
    assert deployment["prompt_version"] and len(deployment["prompt_sha256"]) == 16
    # The record holds every item's score, keyed by set and question id, not by path.
    assert record.deployment.index == deployment["index"]
    scores = record.scores["answers/answerable_correct"]
    assert len(scores) == 20 and all(key.startswith("sample_questions/") for key in scores)
    assert set(scores.values()) <= {0.0, 1.0}


def test_the_same_configuration_passes_against_its_own_record(champion, gate_env, capsys):
    code, verdict = run_gate(capsys)
    assert code == 0 and verdict["passed"] and not verdict["baseline"]
    assert not verdict["accepted"]
    assert verdict["reason"].startswith("passed")
    for metric in verdict["metrics"].values():
        assert metric["gated"] and metric["difference"] == 0.0 and metric["passed"]
    assert verdict["items"] == 30
    assert verdict["champion"]["index"] == verdict["candidate"]["index"]


def test_a_candidate_that_declines_everything_is_refused(champion, gate_env, capsys, monkeypatch):
    """A decline threshold no evidence reaches: every answerable question goes unanswered."""
    monkeypatch.setenv("QPBOT_ANSWER_MIN_EVIDENCE_SCORE", "5")
    path = Path(gate_env["QPBOT_GATE_CHAMPION"])
    before = path.read_bytes()
    code, verdict = run_gate(capsys, "--accept")
    assert code == 1 and not verdict["passed"] and not verdict["accepted"]
    answers = verdict["metrics"]["answers/answerable_correct"]
    assert not answers["passed"] and answers["candidate"] == 0.0
    assert answers["difference"] < -answers["allowed_drop"]
    assert answers["regressions"] and answers["regressions"][0]["question"]
    assert "answers/answerable_correct" in verdict["reason"]
    assert verdict["reason"].startswith("refused")
    # Retrieval did not change, and declining is right for the unanswerable questions.
    assert verdict["metrics"]["retrieval/hybrid/ndcg@10"]["passed"]
    assert verdict["metrics"]["answers/unanswerable_declined"]["candidate"] == 1.0
    assert verdict["candidate"]["answer_policy"]["min_evidence_score"] == 5.0
    assert path.read_bytes() == before  # a refused candidate never becomes the champion


def test_a_champion_better_beyond_noise_refuses_the_candidate(
    champion, gate_env, capsys, tmp_path, monkeypatch
):
    """A champion that retrieved better on every question (by 0.1 nDCG@10 each, so the
    difference is far beyond its noise): the candidate is refused, and the table says so."""
    _, _, record = champion
    metric = "retrieval/hybrid/ndcg@10"
    better = record.model_copy(
        update={
            "scores": {
                **record.scores,
                metric: {item: score + 0.1 for item, score in record.scores[metric].items()},
            }
        }
    )
    path = tmp_path / "better.json"
    path.write_text(better.model_dump_json())
    monkeypatch.setenv("QPBOT_GATE_CHAMPION", str(path))
    assert main(["gate"]) == 1
    table = capsys.readouterr().out
    assert table.startswith(f"gate refused: worse beyond noise: {metric}")
    assert "answers/unanswerable_declined" in table and "allowed drop" in table
    assert "candidate: code" in table and "champion: code" in table


def test_misconfiguration_exits_2_naming_the_setting(gate_env, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("QPBOT_EVAL_QA_SETS")
    assert main(["gate"]) == 2
    assert "QPBOT_EVAL_QA_SETS" in capsys.readouterr().err

    monkeypatch.setenv("QPBOT_EVAL_QA_SETS", json.dumps([str(tmp_path / "missing.jsonl")]))
    code, verdict = run_gate(capsys)
    assert code == 2 and not verdict["passed"]
    assert "QPBOT_EVAL_QA_SETS" in verdict["error"] and "missing.jsonl" in verdict["error"]

    monkeypatch.setenv("QPBOT_EVAL_QA_SETS", gate_env["QPBOT_EVAL_QA_SETS"])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    monkeypatch.setenv("QPBOT_GATE_CHAMPION", str(broken))
    assert main(["gate"]) == 2
    assert "QPBOT_GATE_CHAMPION" in capsys.readouterr().err

    # The console script itself, on a home where nothing was ingested.
    environment = {**os.environ, "QPBOT_HOME": str(tmp_path / "empty-home")}
    environment.pop("QPBOT_GATE_CHAMPION")
    finished = subprocess.run(
        [str(Path(sys.executable).parent / "qpbot"), "gate", "--json"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert finished.returncode == 2, finished.stderr
    assert "qpbot ingest" in json.loads(finished.stdout)["error"]

    # Without QPBOT_GATE_CHAMPION, the pointer on the state store: named, with what to do.
    monkeypatch.delenv("QPBOT_GATE_CHAMPION")
    monkeypatch.setenv("QPBOT_HOME", str(tmp_path / "torn-home"))
    torn = tmp_path / "torn-home" / CHAMPION_SCORES.key
    torn.parent.mkdir(parents=True)
    torn.write_text('{"recorded_at": ')
    assert main(["gate"]) == 2
    assert f"{torn} is not a EvaluationRecord record" in capsys.readouterr().err


def record_of(scores: dict[str, dict[str, float]]) -> EvaluationRecord:
    deployment = Deployment(
        code="abc", embedding_model="model", index="t@v1", documents=1, chunks=1,
        prompt_version="v", prompt_sha256="h", answer_mode="extractive", generator=None,
    )  # fmt: skip
    return EvaluationRecord(
        recorded_at="2026-01-01T00:00:00+00:00", deployment=deployment, scores=scores,
        questions={}, sets={},
    )  # fmt: skip


def test_verdict_rules_without_a_model():
    """Only metrics both records scored are gated; nothing in common, or a metric the
    candidate was not measured on, refuses; a CI that demands a champion refuses without
    one."""
    candidate = record_of({"answers/a": {"s/1": 1.0, "s/2": 1.0}, "retrieval/x": {"s/1": 0.5}})
    champion = record_of({"answers/a": {"s/1": 1.0, "s/2": 1.0, "s/3": 0.0}})
    verdict = compare_with_champion(candidate, champion)
    assert verdict["passed"] and verdict["items"] == 2
    assert not verdict["metrics"]["retrieval/x"]["gated"]
    assert verdict["metrics"]["answers/a"]["champion_only"] == 1

    elsewhere = record_of({"answers/a": {"t/9": 1.0}})
    refused = compare_with_champion(candidate, elsewhere)
    assert not refused["passed"] and "no evaluation item in common" in refused["reason"]

    narrower = record_of({"retrieval/x": {"s/1": 0.5}})  # its answer set was dropped
    dropped = compare_with_champion(narrower, champion)
    assert not dropped["passed"] and "answers/a" in dropped["reason"]

    assert compare_with_champion(candidate, None)["passed"]
    demanded = compare_with_champion(candidate, None, require_champion=True)
    assert not demanded["passed"] and demanded["baseline"]


def test_with_a_storage_url_the_champion_is_a_pointer_on_s3(
    s3,  # noqa: F811 (the fixture)
    sample_documents,
    tmp_path,
    monkeypatch,
    capsys,
):
    """QPBOT_STORAGE_URL and no QPBOT_GATE_CHAMPION: `--accept` writes the champion's record
    to the state store, where the next gate reads it, from any home (a CI machine's); no
    home holds it."""
    question = json.loads(SAMPLE_QUESTIONS.read_text().splitlines()[0])
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / question["document"]).write_bytes(
        (sample_documents / question["document"]).read_bytes()
    )
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps(question) + "\n")
    home = tmp_path / "home"
    use_gate_environment(
        monkeypatch,
        {"QPBOT_STORAGE_URL": STORAGE_URL, "QPBOT_EVAL_QA_SETS": json.dumps([str(questions)])},
    )
    ingest_into(home, documents)
    monkeypatch.setenv("QPBOT_HOME", str(home))

    code, verdict = run_gate(capsys, "--accept")
    assert code == 0 and verdict["baseline"] and verdict["accepted"]
    assert verdict["champion_record"] == f"{STORAGE_URL}/{CHAMPION_SCORES.key}"
    assert f"platform/{CHAMPION_SCORES.key}" in stored_keys(s3, "index/")
    assert not list(home.rglob(Path(CHAMPION_SCORES.key).name))

    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("QPBOT_HOME", str(elsewhere))
    code, verdict = run_gate(capsys)
    assert code == 0 and not verdict["baseline"] and verdict["items"] == 1
    assert verdict["champion"] == verdict["candidate"]
    assert not list(elsewhere.rglob(Path(CHAMPION_SCORES.key).name))
