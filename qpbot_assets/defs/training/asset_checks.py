"""The gate: a candidate index is promoted only when it retrieves at least as well as the
champion on the evaluation sets."""

import dagster as dg

from qpbot_assets.defs.resources import (
    EmbeddingModelResource,
    EvaluationResource,
    FeedbackDatabaseResource,
    MlflowResource,
    SearchIndexResource,
)
from qpbot_assets.defs.training.assets import REGISTERED_EMBEDDER, candidate_index, read_upstream
from qpbot_assets.learning.feedback import rated_answers
from qpbot_assets.learning.gate import GateSet, compare_retrievers
from qpbot_serving import state as st
from qpbot_serving.evaluation import read_qrels, read_queries


@dg.asset_check(asset=candidate_index, blocking=True)
def candidate_at_least_as_good_as_champion(
    index: SearchIndexResource,
    embedding_model: EmbeddingModelResource,
    evaluation: EvaluationResource,
    feedback_db: FeedbackDatabaseResource,
    mlflow: MlflowResource,
) -> dg.AssetCheckResult:
    """nDCG@10 of the candidate and the champion in the default (hybrid) and the dense mode,
    over the configured BEIR sets and the judged feedback queries held out from training.
    Passes when the candidate is at least as good in both; with no evaluation query at all
    it refuses, since nothing shows the candidate is good."""
    candidate = read_upstream(index, st.INDEX_CANDIDATE)
    champion_pointer = index.state.read(st.PROMOTED_INDEX)
    champion = embedding_model.retriever(champion_pointer)
    challenger_pointer = st.PromotedIndex(**candidate.snapshot.model_dump(), promoted_at="")
    challenger = embedding_model.retriever(challenger_pointer)

    sets = [
        GateSet(item.name, read_queries(item.queries), read_qrels(item.qrels))
        for item in evaluation.beir_sets
    ]
    from qpbot_assets.learning.golden import feedback_golden_set

    queries, qrels = feedback_golden_set(rated_answers(feedback_db.state), split="validation")
    if queries:
        sets.append(GateSet("feedback-validation", queries, qrels))
    verdict = compare_retrievers(champion, challenger, sets)

    # The verdict is kept with the model version (and in this check's result).
    client = mlflow.client()
    version = candidate.embedder.mlflow_version
    client.set_model_version_tag(
        REGISTERED_EMBEDDER, version, "gate", "passed" if verdict["passed"] else "refused"
    )
    client.set_model_version_tag(REGISTERED_EMBEDDER, version, "gate_reason", verdict["reason"])
    return dg.AssetCheckResult(
        passed=verdict["passed"],
        description=verdict["reason"],
        metadata={
            "reason": verdict["reason"],
            "queries": verdict["queries"],
            "champion": champion_pointer.label,
            "candidate": challenger_pointer.label,
            "scores": dg.MetadataValue.md(verdict["table"]),
            **{
                f"{side}_{mode}_ndcg@10": verdict[side][mode]
                for side in ("champion", "candidate")
                for mode in verdict["champion"]
            },
        },
    )
