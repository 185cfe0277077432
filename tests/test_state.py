"""The pointers between domains: typed records, atomic writes, one writer each, and the
promotions and rollbacks that move them."""

import ast
import json
from pathlib import Path

import pytest

from qpbot_assets.indexing.promotion import (
    StaleSnapshot,
    promote_candidate,
    promote_snapshot,
    rollback,
)
from qpbot_serving import state as st

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("qpbot_assets", "qpbot_serving")
MODEL = "all-MiniLM-L6-v2"


def snapshot(table="chunks__all-minilm-l6-v2", version=3, model=MODEL) -> st.IndexSnapshot:
    return st.IndexSnapshot(
        table=table, version=version, embedding_model=model, dimension=384, chunks=5, documents=2
    )


def fine_tune(name="ft-1", version="1") -> st.FineTunedEmbedder:
    return st.FineTunedEmbedder(model=f"/models/{name}", base_model=MODEL, mlflow_version=version)


def test_a_pointer_is_written_whole_and_read_back_typed(tmp_path):
    state = st.StateStore(tmp_path)
    assert state.read(st.PROMOTED_INDEX) is None
    written = promote_snapshot(state, snapshot(), MODEL)
    assert state.read(st.PROMOTED_INDEX) == written
    assert written.label == "chunks__all-minilm-l6-v2@v3" and written.snapshot == snapshot()
    assert state.location(st.PROMOTED_INDEX) == f"{tmp_path}/index/PROMOTED.json"
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["PROMOTED.json"]  # no temp left


def test_records_of_older_and_newer_releases_are_read(tmp_path):
    state = st.StateStore(tmp_path)
    path = tmp_path / st.PROMOTED_INDEX.key
    path.parent.mkdir(parents=True)
    # Written before backends existed (no embedding_backend), with a field from the future.
    path.write_text(
        '{"table": "t", "version": 1, "embedding_model": "m", "dimension": 3, "chunks": 1,'
        ' "documents": 1, "promoted_at": "2026-01-01T00:00:00+00:00", "shard": 7}'
    )
    promoted = state.read(st.PROMOTED_INDEX)
    assert promoted.embedding_backend == "torch" and promoted.label == "t@v1"


@pytest.mark.parametrize("content", ['{"table": "t"}', '{"table": "t", "version": ', "[]"])
def test_a_pointer_that_is_not_its_record_is_an_error_naming_the_file(tmp_path, content):
    state = st.StateStore(tmp_path)
    path = tmp_path / st.INDEX_SNAPSHOT.key
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(st.StateError, match="SNAPSHOT.json is not a IndexSnapshot record"):
        state.read(st.INDEX_SNAPSHOT)


def test_a_record_of_another_type_is_refused(tmp_path):
    with pytest.raises(TypeError):
        st.StateStore(tmp_path).write(st.PROMOTED_INDEX, snapshot())


def test_promotion_and_rollback_put_back_exactly_what_was_there(tmp_path):
    state = st.StateStore(tmp_path)
    base = promote_snapshot(state, snapshot(), MODEL)
    first = promote_candidate(state, snapshot("chunks__ft-1", 1, "/models/ft-1"), fine_tune())
    assert st.serving_embedding_model(state, MODEL) == "/models/ft-1"
    # A run that started before the promotion must not move the pointer back.
    with pytest.raises(StaleSnapshot, match="the serving embedder is /models/ft-1"):
        promote_snapshot(state, snapshot(version=4), MODEL)
    assert state.read(st.PROMOTED_INDEX) == first
    second = fine_tune("ft-2", "2")
    promote_candidate(state, snapshot("chunks__ft-2", 1, "/models/ft-2"), second)
    assert [p.embedder.model for p in state.entries(st.PROMOTIONS)] == [
        "/models/ft-1",
        "/models/ft-2",
    ]

    undone = rollback(state)
    assert undone.embedder == second and state.read(st.CHAMPION_EMBEDDER) == fine_tune()
    assert state.read(st.PROMOTED_INDEX).snapshot == first.snapshot
    rollback(state)
    assert state.read(st.CHAMPION_EMBEDDER) is None  # back to the configured model
    assert state.read(st.PROMOTED_INDEX).snapshot == base.snapshot
    assert st.serving_embedding_model(state, MODEL) == MODEL
    with pytest.raises(LookupError, match="nothing to roll back"):
        rollback(state)


def test_the_rollback_job_fails_with_the_reason_when_nothing_was_promoted(qpbot_home, capsys):
    from qpbot_assets.cli import main

    assert main(["rollback"]) == 1
    assert "nothing to roll back: no candidate has been promoted here" in capsys.readouterr().err


# --- the rules, read from the source ------------------------------------------------------
def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            yield name.removesuffix(".__init__"), ast.parse(path.read_text())


POINTER_NAMES = {
    name: value for name, value in vars(st).items() if isinstance(value, st.Pointer | st.Log)
}
WRITES = {"write", "clear", "append", "rewrite"}


def _writes(tree):
    """(method, pointer name) of each `<store>.write(POINTER, ...)`-like call."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in WRITES
            and node.args
        ):
            target = node.args[0]
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name in POINTER_NAMES:
                yield node.func.attr, name


def test_every_pointer_is_listed_and_has_one_writer_that_writes_it():
    assert set(POINTER_NAMES.values()) == set(st.POINTERS)
    written_by: dict[str, set[str]] = {name: set() for name in POINTER_NAMES}
    for module, tree in _modules():
        for _, name in _writes(tree):
            written_by[name].add(module)
    for name, pointer in POINTER_NAMES.items():
        assert written_by[name] == {pointer.writer}, f"{name} is written by {written_by[name]}"


def _docstrings(tree) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


def test_no_other_module_names_a_pointer_file():
    files = {Path(pointer.key).name for pointer in st.POINTERS}
    for module, tree in _modules():
        if module == "qpbot_serving.state":
            continue
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
            ):
                named = [f for f in files if f in node.value]
                assert not named, f"{module} names {named}: read and write it through state"


def test_a_sensor_listing_is_an_object_its_cursor_names_and_old_ones_go(tmp_path):
    listings = st.SourceListings(st.StateStore(tmp_path), "inbox_sensor")
    folder = tmp_path / st.LISTINGS_DIR / "inbox_sensor"
    first = {f"file:///inbox/{n}.md": f"{n}:1" for n in range(1000)}
    second = {**first, "file:///inbox/new.md": "1"}
    third = dict(list(first.items())[1:])

    one = listings.write(first, None)
    assert len(one) < 100 and listings.read(one) == first
    two = listings.write(second, one)
    # A tick that failed after writing keeps its cursor: the listing it names is still there.
    assert listings.read(one) == first and listings.read(two) == second
    three = listings.write(third, two)
    assert listings.read(three) == third and listings.read(two) == second
    assert len(list(folder.iterdir())) == 2  # the first, two ticks back, is gone
    assert listings.write(third, three) != three and listings.read(three) == third
    # The cursor of before listings were objects held the listing itself.
    legacy = '{"file:///inbox/a.md": "1"}'
    assert listings.read(legacy) == {"file:///inbox/a.md": "1"}
    assert listings.read(listings.write({}, legacy)) == {}
    (folder / f"{json.loads(three)['listing']}.json.gz").unlink()
    with pytest.raises(st.StateError, match="reset the sensor's cursor"):
        listings.read(three)
