"""Comparing a candidate retriever with the champion on evaluation sets (no Dagster)."""

from __future__ import annotations

from dataclasses import dataclass

from qpbot_serving.evaluation import ndcg_at_k

# A candidate embedder must not be worse in the mode the service answers with by default
# (hybrid), nor in dense retrieval, which measures the embedder alone.
GATE_MODES = ("hybrid", "dense")
REPORTED_MODES = GATE_MODES


@dataclass(frozen=True)
class GateSet:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def compare_retrievers(champion, candidate, sets: list[GateSet], k: int = 10) -> dict:
    """nDCG@k of both retrievers per mode, averaged over every judged query of every set.

    Returns {"passed", "reason", "queries", "champion": {mode: score}, "candidate": {...},
    "per_set": {...}, "table": markdown}. Passes when the candidate scores at least the
    champion's nDCG@k in every one of GATE_MODES; refuses when there is no judged query.
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
    else:
        passed = all(summary["candidate"][m] >= summary["champion"][m] for m in GATE_MODES)
        comparisons = ", ".join(
            f"{m} {summary['candidate'][m]:.4f} vs {summary['champion'][m]:.4f}" for m in GATE_MODES
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
        "per_set": per_set,
        "table": "\n".join(lines),
    }


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
