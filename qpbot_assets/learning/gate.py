"""Comparing a candidate retriever with the champion on evaluation sets (no Dagster).

"At least as good" is judged per query, paired: the candidate passes a mode when its mean
nDCG@10 is not below the champion's by more than the noise of the comparison (one-sided
95%: 1.645 standard errors of the per-query differences). A strict `>=` on the means would
refuse almost every new model on golden sets made from feedback, because users could only
judge what the champion retrieved: a chunk the candidate finds and nobody judged counts as
irrelevant, so those sets lean towards the champion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qpbot_serving.evaluation import ndcg_at_k

# A candidate embedder must not be worse in the mode the service answers with by default
# (hybrid), nor in dense retrieval, which measures the embedder alone.
GATE_MODES = ("hybrid", "dense")
REPORTED_MODES = GATE_MODES
NOISE_Z = 1.645  # one-sided 95%


@dataclass(frozen=True)
class GateSet:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def compare_retrievers(champion, candidate, sets: list[GateSet], k: int = 10) -> dict:
    """nDCG@k of both retrievers per mode, averaged over every judged query of every set.

    Returns {"passed", "reason", "queries", "champion": {mode: score}, "candidate": {...},
    "difference": {mode: mean}, "allowed_drop": {mode: ...}, "per_set": {...}, "table":
    markdown}. Passes when, in every one of GATE_MODES, the candidate is not worse than the
    champion beyond noise (see the module docstring); refuses when there is no judged query.
    """
    scores: dict[str, dict[str, list[float]]] = {
        side: {mode: [] for mode in REPORTED_MODES} for side in ("champion", "candidate")
    }
    per_set: dict[str, dict] = {}
    for gate_set in sets:
        judged = [
            q for q in gate_set.queries if any(g > 0 for g in gate_set.qrels.get(q, {}).values())
        ]
        set_scores = {}
        for side, retriever in (("champion", champion), ("candidate", candidate)):
            for mode in REPORTED_MODES:
                values = [
                    ndcg_at_k(
                        [hit.document_id for hit in retriever.search(gate_set.queries[q], k, mode)],
                        gate_set.qrels[q],
                        k,
                    )
                    for q in judged
                ]
                scores[side][mode].extend(values)
                set_scores[f"{side}_{mode}"] = _mean(values)
        per_set[gate_set.name] = {"queries": len(judged), **set_scores}

    queries = len(scores["champion"][GATE_MODES[0]])
    summary = {side: {m: _mean(v) for m, v in modes.items()} for side, modes in scores.items()}
    if queries == 0:
        passed = False
        reason = (
            "refused: no evaluation query; configure QPBOT_EVAL_BEIR_SETS or collect "
            "feedback with judged sources"
        )
    difference, allowed_drop = {}, {}
    for mode in GATE_MODES:
        diffs = [
            new - old
            for new, old in zip(scores["candidate"][mode], scores["champion"][mode], strict=True)
        ]
        difference[mode] = _mean(diffs)
        allowed_drop[mode] = round(NOISE_Z * _standard_error(diffs), 4)
    if queries:
        passed = all(difference[m] >= -allowed_drop[m] for m in GATE_MODES)
        comparisons = ", ".join(
            f"{m} {summary['candidate'][m]:.4f} vs {summary['champion'][m]:.4f} "
            f"(difference {difference[m]:+.4f}, noise {allowed_drop[m]:.4f})"
            for m in GATE_MODES
        )
        reason = (
            f"{'passed' if passed else 'refused'}: nDCG@{k} candidate vs champion: "
            f"{comparisons} on {queries} queries"
        )
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
