"""Moving the champion: which index the service reads, which embedder ingestion uses, and
the way back. The one writer of `state.PROMOTED_INDEX`, `state.CHAMPION_EMBEDDER` and
`state.PROMOTIONS`. No Dagster here.

Two ways in: `promote_snapshot` (a checked index of the serving embedder: after ingestion,
or a BEIR corpus indexed for evaluation) and `promote_candidate` (a fine-tuned embedder and
its index, after the gate). A candidate's promotion is remembered, so `rollback` puts back
exactly what it replaced.

Each holds the promotion lease (`state.PROMOTION_LEASE`) while it reads and writes, so two
promotions never interleave (a lost update would serve an older index, or undo the
promotion of a fine-tuned embedder), also from different machines on object storage.
"""

from __future__ import annotations

from qpbot_serving import state as st


class StaleSnapshot(Exception):
    """The snapshot is of another model than the one serving: promoting it would undo the
    promotion of a fine-tuned embedder (a run that started before that promotion)."""


def promote_snapshot(
    state: st.StateStore, snapshot: st.IndexSnapshot, configured_model: str
) -> st.PromotedIndex:
    """Points the service at `snapshot`, an index of the serving embedder (the configured
    model or its promoted fine-tune). Raises StaleSnapshot for an index of another model."""
    with state.lease(st.PROMOTION_LEASE):
        serving = st.serving_embedding_model(state, configured_model)
        if snapshot.embedding_model != serving:
            raise StaleSnapshot(
                f"the snapshot is of {snapshot.embedding_model}, the serving embedder is {serving}"
            )
        return _point_at(state, snapshot)


def promote_candidate(
    state: st.StateStore, snapshot: st.IndexSnapshot, embedder: st.FineTunedEmbedder
) -> st.PromotedIndex:
    """Points the service at the candidate table (`snapshot`) and ingestion at its model
    (`embedder`); remembers the previous champion for `rollback`."""
    with state.lease(st.PROMOTION_LEASE):
        state.append(
            st.PROMOTIONS,
            st.Promotion(
                promoted_at=st.now_iso(),
                embedder=embedder,
                snapshot=snapshot,
                previous_embedder=state.read(st.CHAMPION_EMBEDDER),
                previous_pointer=state.read(st.PROMOTED_INDEX),
            ),
        )
        state.write(st.CHAMPION_EMBEDDER, embedder)
        return _point_at(state, snapshot)


def rollback(state: st.StateStore) -> st.Promotion:
    """Undoes the last promotion: the previous embedder and pointer come back. Returns the
    promotion undone. Raises LookupError when there is nothing to roll back."""
    with state.lease(st.PROMOTION_LEASE):
        return _rollback(state)


def _rollback(state: st.StateStore) -> st.Promotion:
    promotions = state.entries(st.PROMOTIONS)
    if not promotions:
        raise LookupError("nothing to roll back: no candidate has been promoted here")
    last = promotions.pop()
    if last.previous_embedder:
        state.write(st.CHAMPION_EMBEDDER, last.previous_embedder)
    else:
        state.clear(st.CHAMPION_EMBEDDER)  # back to the configured model itself
    if last.previous_pointer:
        _point_at(state, last.previous_pointer.snapshot)
    state.rewrite(st.PROMOTIONS, promotions)
    return last


def _point_at(state: st.StateStore, snapshot: st.IndexSnapshot) -> st.PromotedIndex:
    promoted = st.PromotedIndex(**snapshot.model_dump(), promoted_at=st.now_iso())
    return state.write(st.PROMOTED_INDEX, promoted)
