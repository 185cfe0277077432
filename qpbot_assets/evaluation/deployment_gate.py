"""`qpbot gate`: is what this checkout and its settings would deploy at least as good as the
champion, on the configured evaluation sets? No Dagster here.

The candidate is what `qpbot serve` would serve from this QPBOT_HOME with this code: the
promoted index (and the embedder recorded in it, on the configured embedding backend), the
prompt, the answer mode, policy and generator. It is scored item by item, as the learning loop's gates score (`learning.gate`):

- retrieval, nDCG@10 per query in the hybrid and dense modes: the BEIR sets of
  QPBOT_EVAL_BEIR_SETS, and every question of QPBOT_EVAL_QA_SETS that names the file that
  answers it (`"document": "handbook.pdf"`);
- answers, as the answer benchmark counts them (bench/bench_answers.py): a question with a
  reference answered right (the answer contains it), a question without one (`"answer":
  null`) declined.

The champion is the evaluation record of what is deployed now (`state.EvaluationRecord`),
written by `qpbot gate --accept` when a candidate passed: the pointer `state.CHAMPION_SCORES`
on the state store (QPBOT_STORAGE_URL, else QPBOT_HOME), or the file QPBOT_GATE_CHAMPION
names. Each metric is compared paired, over the items both scored, with the gates' noise
rule (`gate.compare_paired`); the candidate passes when no metric is worse beyond noise.
With no record yet the candidate passes as the baseline: the first deployment has nothing to
be compared with, and refusing it would only force a manual bypass; `--require-champion`
refuses instead (for a CI whose champion record must exist).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from qpbot_assets.learning.gate import (
    GATE_MODES,
    GateSet,
    answer_scores,
    compare_paired,
    retrieval_scores,
)
from qpbot_assets.learning.golden import query_id
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import (
    CHAMPION_SCORES,
    Deployment,
    EvaluationRecord,
    Pointer,
    StateError,
    StateStore,
)

REPO = Path(__file__).resolve().parents[2]


class GateMisconfigured(ValueError):
    """The gate cannot run as configured; the message names the setting to fix."""


def evaluation_sets(settings: QpbotSettings) -> tuple[list[GateSet], dict[str, list[dict]]]:
    """The retrieval sets (BEIR, and the question sets' questions that name their file) and
    the question sets {name: items}. Raises GateMisconfigured naming the setting at fault."""
    from qpbot_assets.learning.qa_eval import read_qa_set
    from qpbot_serving.evaluation import read_qrels, read_queries

    if not settings.eval_beir_sets and not settings.eval_qa_sets:
        raise GateMisconfigured(
            "no evaluation set: configure QPBOT_EVAL_QA_SETS (JSONL of question, answer and "
            'the "document" that answers it) or QPBOT_EVAL_BEIR_SETS'
        )
    retrieval: list[GateSet] = []
    for beir in settings.eval_beir_sets:
        try:
            retrieval.append(GateSet(beir.name, read_queries(beir.queries), read_qrels(beir.qrels)))
        except (OSError, ValueError, KeyError) as problem:
            raise GateMisconfigured(f"QPBOT_EVAL_BEIR_SETS, set {beir.name!r}: {problem}") from None
    answers: dict[str, list[dict]] = {}
    for path in settings.eval_qa_sets:
        try:
            items = read_qa_set(Path(path), allow_unanswerable=True)
        except (OSError, ValueError) as problem:
            raise GateMisconfigured(f"QPBOT_EVAL_QA_SETS: {problem}") from None
        name = path.stem if path.stem not in answers else f"{path.stem}-{len(answers)}"
        answers[name] = items
        located = {query_id(i["question"]): i for i in items if i.get("document")}
        if located:
            queries = {qid: item["question"] for qid, item in located.items()}
            qrels = {qid: {Path(item["document"]).name: 1} for qid, item in located.items()}
            retrieval.append(GateSet(name, queries, qrels, judged_by="file_name"))
    if not any(answers.values()) and not any(s.queries for s in retrieval):
        raise GateMisconfigured(
            "the evaluation sets of QPBOT_EVAL_QA_SETS and QPBOT_EVAL_BEIR_SETS hold no question"
        )
    return retrieval, answers


def evaluate_deployment(settings: QpbotSettings) -> EvaluationRecord:
    """Scores what the settings would serve on the configured sets. Raises GateMisconfigured
    (no evaluation set, a missing file, no promoted index, a generator that cannot be built)."""
    from qpbot_serving.answering import Answerer, AnswerPolicy
    from qpbot_serving.generation import build_generator
    from qpbot_serving.retrieval import IndexNotReady, Retriever

    retrieval_sets, answer_sets = evaluation_sets(settings)
    try:
        retriever = Retriever.from_settings(settings)  # as the service opens it
    except IndexNotReady as problem:
        raise GateMisconfigured(f"QPBOT_HOME={settings.home}: {problem}") from None
    policy = AnswerPolicy.from_settings(settings)
    generator = None
    if policy.mode != "extractive":
        try:
            generator = build_generator(settings)
        except ValueError as problem:
            raise GateMisconfigured(str(problem)) from None
    answerer = Answerer.for_retriever(retriever, generator, policy)

    scores = {
        f"retrieval/{mode}/ndcg@10": by_item
        for mode, by_item in retrieval_scores(retriever, retrieval_sets, GATE_MODES).items()
    }
    scores.update(
        {
            f"answers/{metric}": by_item
            for metric, by_item in answer_scores(retriever, answerer, answer_sets).items()
        }
    )
    questions = {
        f"{gate_set.name}/{qid}": text
        for gate_set in retrieval_sets
        for qid, text in gate_set.queries.items()
    }
    questions.update(
        {
            f"{name}/{query_id(item['question'])}": item["question"]
            for name, items in answer_sets.items()
            for item in items
        }
    )
    promoted = retriever.promoted
    prompt_version, prompt_sha256 = _prompt()
    deployment = Deployment(
        code=code_version(),
        embedding_model=retriever.info.embedding_model,
        embedding_backend=retriever.embedder.backend,
        index=promoted.label,
        documents=promoted.documents,
        chunks=promoted.chunks,
        prompt_version=prompt_version,
        prompt_sha256=prompt_sha256,
        answer_mode=policy.mode,
        generator=f"{settings.generator}:{generator.model_name}" if generator else None,
        answer_policy={k: v for k, v in asdict(policy).items() if k != "mode"},
    )
    return EvaluationRecord(
        recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        deployment=deployment,
        scores={metric: by_item for metric, by_item in scores.items() if by_item},
        questions=questions,
        sets={"retrieval": [s.name for s in retrieval_sets], "answers": list(answer_sets)},
    )


def compare_with_champion(
    candidate: EvaluationRecord, champion: EvaluationRecord | None, require_champion: bool = False
) -> dict:
    """The gate's verdict: {"passed", "reason", "baseline" (no champion), "metrics": {name:
    `compare_paired` + "gated"}, "items" (distinct items compared), "candidate" and
    "champion" (what each deployment was)}. Every metric both records hold is gated; one
    only the candidate has is reported, not gated (the champion was never measured on it); a
    metric only the champion has refuses."""
    verdict = {
        "candidate": candidate.deployment.model_dump(),
        "champion": champion.deployment.model_dump() if champion else None,
        "champion_recorded_at": champion.recorded_at if champion else None,
    }
    if champion is None:
        passed = not require_champion
        return {
            "passed": passed,
            "reason": (
                "passed: no champion record: this candidate becomes the baseline"
                if passed
                else "refused: no champion record to compare with (--require-champion)"
            ),
            "baseline": True,
            "metrics": {
                metric: {
                    "candidate": round(sum(by_item.values()) / len(by_item), 4),
                    "items": len(by_item),
                }
                for metric, by_item in candidate.scores.items()
            },
            "items": len({key for by_item in candidate.scores.values() for key in by_item}),
            **verdict,
        }
    metrics = {}
    for metric, by_item in candidate.scores.items():
        compared = compare_paired(champion.scores.get(metric, {}), by_item)
        compared["gated"] = compared["items"] > 0
        for row in compared["regressions"]:
            row["question"] = candidate.questions.get(row["item"])
        metrics[metric] = compared
    gated = {metric: m for metric, m in metrics.items() if m["gated"]}
    items = {
        key
        for metric in gated
        for key in candidate.scores[metric]
        if key in champion.scores[metric]
    }
    unmeasured = [metric for metric in champion.scores if metric not in candidate.scores]
    if unmeasured:
        # Dropping an evaluation set must not take its metric out of the gate unnoticed.
        passed = False
        reason = (
            f"refused: the champion was measured on {', '.join(unmeasured)} and the candidate "
            "is not (were the evaluation sets changed?); to start a new baseline, remove the "
            "record"
        )
    elif not gated:
        passed = False
        reason = (
            "refused: no evaluation item in common with the champion's record (were the "
            "evaluation sets changed?); to start a new baseline, remove the record"
        )
    else:
        worse = [metric for metric, m in gated.items() if not m["passed"]]
        passed = not worse
        shown = worse or list(gated)
        reason = ("refused: worse beyond noise: " if worse else "passed: ") + "; ".join(
            f"{metric} {gated[metric]['candidate']:.4f} vs {gated[metric]['champion']:.4f} "
            f"(difference {gated[metric]['difference']:+.4f}, allowed drop "
            f"{gated[metric]['allowed_drop']:.4f}, {gated[metric]['items']} items)"
            for metric in shown
        )
    return {
        "passed": passed,
        "reason": reason,
        "baseline": False,
        "metrics": metrics,
        "items": len(items),
        **verdict,
    }


def code_version() -> str | None:
    """The git commit of this checkout ("+dirty" with uncommitted changes to tracked files),
    else $GITHUB_SHA, else None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GITHUB_SHA")
    return f"{head}+dirty" if changes else head


def _prompt() -> tuple[str, str]:
    """The prompt's version and a hash of its wording and layout (a change that forgot to
    bump the version still shows)."""
    from qpbot_serving.prompting import PROMPT_VERSION, build_messages

    layout = json.dumps(build_messages("{question}", []), sort_keys=True)
    return PROMPT_VERSION, hashlib.sha256(layout.encode()).hexdigest()[:16]


def _champion(settings: QpbotSettings) -> tuple[StateStore, Pointer[EvaluationRecord]]:
    """The store and pointer of the champion's record: the file QPBOT_GATE_CHAMPION names,
    else CHAMPION_SCORES on the state store."""
    path = settings.gate_champion
    if path is None:
        return StateStore.from_settings(settings), CHAMPION_SCORES
    return StateStore(path.parent), Pointer(path.name, EvaluationRecord, CHAMPION_SCORES.writer)


def champion_location(settings: QpbotSettings) -> str:
    """Where the champion's record is (a path, or its s3:// URI)."""
    store, pointer = _champion(settings)
    return store.location(pointer)


def load_champion(settings: QpbotSettings) -> EvaluationRecord | None:
    """The champion's record (`champion_location`), None before the first `--accept`; raises
    GateMisconfigured when what is there is not a record."""
    store, pointer = _champion(settings)
    try:
        return store.read(pointer)
    except StateError as problem:  # its message says where and what to do
        named_by = "QPBOT_GATE_CHAMPION" if settings.gate_champion else "the champion's record"
        raise GateMisconfigured(f"{named_by}: {problem}") from None


def record_champion(settings: QpbotSettings, record: EvaluationRecord) -> None:
    """Makes `record` the champion's (`champion_location`), replacing the old one whole."""
    store, pointer = _champion(settings)
    if pointer is CHAMPION_SCORES:
        store.write(CHAMPION_SCORES, record)
    else:  # the file QPBOT_GATE_CHAMPION names, written as atomically
        store.write(pointer, record)


def format_verdict(verdict: dict) -> str:
    """The verdict as a short table for a terminal."""

    def cell(value, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.4f}"

    lines = [
        f"gate {verdict['reason']}",
        f"{'metric':<36}{'champion':>10}{'candidate':>11}{'difference':>12}"
        f"{'allowed drop':>14}{'items':>7}",
    ]
    for metric, m in verdict["metrics"].items():
        gated = "" if m.get("gated", True) or verdict["baseline"] else "  (not gated: new)"
        lines.append(
            f"{metric:<36}{cell(m.get('champion')):>10}{cell(m['candidate']):>11}"
            f"{cell(m.get('difference'), '+'):>12}{cell(m.get('allowed_drop')):>14}"
            f"{m['items']:>7}{gated}"
        )
    for side in ("candidate", "champion"):
        d = verdict[side]
        if d is None:
            continue
        recorded = f", recorded {verdict['champion_recorded_at']}" if side == "champion" else ""
        lines.append(
            f"{side}: code {d['code'] or '-'}, embedder {d['embedding_model']} "
            f"({d.get('embedding_backend') or '-'}), index "
            f"{d['index']} ({d['documents']} documents), prompt {d['prompt_version']} "
            f"({d['prompt_sha256']}), answers {d['answer_mode']}, generator "
            f"{d['generator'] or '-'}{recorded}"
        )
    for metric, m in verdict["metrics"].items():
        if m.get("gated") and not m["passed"]:
            for row in m["regressions"][:3]:
                lines.append(
                    f"  {metric}: {row['champion']:.2f} -> {row['candidate']:.2f}  "
                    f"{row['question'] or row['item']}"
                )
    return "\n".join(lines)
