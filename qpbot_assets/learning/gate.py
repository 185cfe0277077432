"""Comparing a candidate with the champion on evaluation sets (no Dagster).

One rule for every gate of the learning loop and for `qpbot gate`: a metric is scored per
item (a query's nDCG@10, a question answered right or not), the candidate's and the
champion's scores are paired by item, and the candidate passes a metric when its mean is not
below the champion's by more than the noise of the comparison (one-sided 95%: 1.645 standard
errors of the per-item differences; `compare_paired`). A strict `>=` on the means would
refuse almost every new model on golden sets made from feedback, because users could only
judge what the champion retrieved: a chunk the candidate finds and nobody judged counts as
irrelevant, so those sets lean towards the champion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from qpbot_serving.evaluation import ndcg_at_k

# A candidate embedder must not be worse in the mode the service answers with by default
# (hybrid), nor in dense retrieval, which measures the embedder alone.
GATE_MODES = ("hybrid", "dense")
REPORTED_MODES = GATE_MODES
NOISE_Z = 1.645  # one-sided 95%
SHOWN_REGRESSIONS = 5  # items per metric named in a comparison, the worst first


@dataclass(frozen=True)
class GateSet:
    """Judged queries: {query id: text} and {query id: {document: grade}}. `judged_by` says
    what the qrels name: "document_id" (BEIR sets, feedback) or "file_name" (the file a
    document was ingested from, as question sets name it; the same on every machine)."""

    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    judged_by: str = "document_id"


def retrieval_scores(
    retriever, sets: Sequence[GateSet], modes: Sequence[str] = REPORTED_MODES, k: int = 10
) -> dict[str, dict[str, float]]:
    """nDCG@k of `retriever` per judged query: {mode: {"set/query id": score}}."""
    scores: dict[str, dict[str, float]] = {mode: {} for mode in modes}
    for gate_set in sets:
        judged = [
            q for q in gate_set.queries if any(g > 0 for g in gate_set.qrels.get(q, {}).values())
        ]
        for mode in modes:
            for q in judged:
                hits = retriever.search(gate_set.queries[q], k, mode)
                ranked = [_judged_name(hit, gate_set.judged_by) for hit in hits]
                scores[mode][f"{gate_set.name}/{q}"] = ndcg_at_k(ranked, gate_set.qrels[q], k)
    return scores


def answer_scores(
    retriever, answerer, sets: Mapping[str, Sequence[dict]]
) -> dict[str, dict[str, float]]:
    """Each question of each set answered as the service answers it (hybrid retrieval of the
    policy's evidence chunks, then `answerer`) and scored as the answer benchmark scores it
    (`qa_eval.answer_is_right`), 1.0 or 0.0: {"answerable_correct": {"set/question id":
    score}, "unanswerable_declined": {...}} (questions whose "answer" is None)."""
    from qpbot_assets.learning.golden import query_id
    from qpbot_assets.learning.qa_eval import answer_is_right

    scores: dict[str, dict[str, float]] = {"answerable_correct": {}, "unanswerable_declined": {}}
    for name, items in sets.items():
        for item in items:
            question, reference = item["question"], item["answer"]
            hits = retriever.search(question, k=answerer.policy.evidence_chunks, mode="hybrid")
            answer = answerer.answer(question, hits)
            metric = "unanswerable_declined" if reference is None else "answerable_correct"
            scores[metric][f"{name}/{query_id(question)}"] = float(
                answer_is_right(answer.text, reference)
            )
    return scores


def _judged_name(hit, judged_by: str) -> str:
    if judged_by == "file_name":
        return Path(unquote(urlparse(hit.source_uri or "").path)).name
    return hit.document_id


def compare_paired(champion: Mapping[str, float], candidate: Mapping[str, float]) -> dict:
    """One metric, paired by item over the items both sides scored.

    Returns {"champion", "candidate" (means over the paired items), "difference" (mean of
    candidate - champion), "allowed_drop" (NOISE_Z standard errors of the differences),
    "items" (paired), "champion_only", "candidate_only" (items one side lacks), "passed"
    (difference >= -allowed_drop; False with no paired item), "regressions" (the items the
    candidate scores lowest against the champion, at most SHOWN_REGRESSIONS)}.
    """
    paired = [key for key in candidate if key in champion]
    diffs = [candidate[key] - champion[key] for key in paired]
    difference = _mean(diffs)
    allowed_drop = round(NOISE_Z * _standard_error(diffs), 4)
    worst = sorted((d, key) for d, key in zip(diffs, paired, strict=True) if d < 0)
    return {
        "champion": _mean([champion[key] for key in paired]),
        "candidate": _mean([candidate[key] for key in paired]),
        "difference": difference,
        "allowed_drop": allowed_drop,
        "items": len(paired),
        "champion_only": sum(key not in candidate for key in champion),
        "candidate_only": len(candidate) - len(paired),
        "passed": bool(paired) and difference >= -allowed_drop,
        "regressions": [
            {"item": key, "champion": champion[key], "candidate": candidate[key]}
            for _, key in worst[:SHOWN_REGRESSIONS]
        ],
    }


def compare_retrievers(champion, candidate, sets: list[GateSet], k: int = 10) -> dict:
    """nDCG@k of both retrievers per mode, averaged over every judged query of every set.

    Returns {"passed", "reason", "queries", "champion": {mode: score}, "candidate": {...},
    "difference": {mode: mean}, "allowed_drop": {mode: ...}, "per_set": {...}, "table":
    markdown}. Passes when, in every one of GATE_MODES, the candidate is not worse than the
    champion beyond noise (`compare_paired`); refuses when there is no judged query.
    """
    scores = {
        "champion": retrieval_scores(champion, sets, REPORTED_MODES, k),
        "candidate": retrieval_scores(candidate, sets, REPORTED_MODES, k),
    }
    verdicts = {
        mode: compare_paired(scores["champion"][mode], scores["candidate"][mode])
        for mode in REPORTED_MODES
    }
    queries = verdicts[GATE_MODES[0]]["items"]
    summary = {side: {mode: verdicts[mode][side] for mode in REPORTED_MODES} for side in scores}
    difference = {mode: verdicts[mode]["difference"] for mode in GATE_MODES}
    allowed_drop = {mode: verdicts[mode]["allowed_drop"] for mode in GATE_MODES}
    if queries == 0:
        passed = False
        reason = (
            "refused: no evaluation query; configure QPBOT_EVAL_BEIR_SETS or collect "
            "feedback with judged sources"
        )
    else:
        passed = all(verdicts[m]["passed"] for m in GATE_MODES)
        comparisons = ", ".join(
            f"{m} {summary['candidate'][m]:.4f} vs {summary['champion'][m]:.4f} "
            f"(difference {difference[m]:+.4f}, noise {allowed_drop[m]:.4f})"
            for m in GATE_MODES
        )
        reason = (
            f"{'passed' if passed else 'refused'}: nDCG@{k} candidate vs champion: "
            f"{comparisons} on {queries} queries"
        )
    per_set: dict[str, dict] = {}
    for gate_set in sets:

        def of_set(by_item: dict[str, float], prefix: str = f"{gate_set.name}/") -> list[float]:
            return [score for key, score in by_item.items() if key.startswith(prefix)]

        per_set[gate_set.name] = {
            "queries": len(of_set(scores["champion"][GATE_MODES[0]])),
            **{
                f"{side}_{mode}": _mean(of_set(by_mode[mode]))
                for side, by_mode in scores.items()
                for mode in REPORTED_MODES
            },
        }
    lines = [
        f"| set | queries | mode | champion nDCG@{k} | candidate nDCG@{k} |",
        "|---|---|---|---|---|",
    ]
    for name, row in per_set.items():
        for mode in REPORTED_MODES:
            lines.append(
                f"| {name} | {row['queries']} | {mode} | {row[f'champion_{mode}']:.4f} "
                f"| {row[f'candidate_{mode}']:.4f} |"
            )
    return {
        "passed": passed,
        "reason": reason,
        "queries": queries,
        **summary,
        "difference": difference,
        "allowed_drop": allowed_drop,
        "per_set": per_set,
        "table": "\n".join(lines),
    }


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def _standard_error(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance / len(values))
