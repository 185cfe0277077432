import os

from qpbot_assets.defs.partitions import MAX_RANGES_PER_CHANGE, contiguous_ranges, shard_ranges
from qpbot_assets.documents.sources import (
    SourceObject,
    diff_listing,
    document_id_for,
    scan_folder,
)


def test_document_ids_are_stable_readable_and_safe():
    uri = "file:///data/Reports%202024/Q1 (final).pdf"
    assert document_id_for(uri) == document_id_for(uri)
    assert document_id_for(uri).startswith("q1-final.pdf-")
    assert set(document_id_for(uri)) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-")
    assert document_id_for("s3://bucket/a/report.pdf") != document_id_for(
        "s3://bucket/b/report.pdf"
    )


def test_scan_folder_skips_hidden_and_temporary_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["a.pdf", "sub/b.docx", ".hidden.pdf", "~$lock.docx", "c.pdf.part"]:
        (tmp_path / name).write_text("x")
    names = sorted(obj.uri.rsplit("/", 1)[-1] for obj in scan_folder(tmp_path))
    assert names == ["a.pdf", "b.docx"]


def test_scan_folder_version_changes_when_a_file_is_edited(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("one")
    before = scan_folder(tmp_path)[0].version
    path.write_text("two, longer")
    os.utime(path, ns=(1, 1))
    assert scan_folder(tmp_path)[0].version != before


def test_diff_listing_finds_added_changed_and_removed():
    previous = {"file:///a": "1", "file:///b": "1", "file:///c": "1"}
    current = [
        SourceObject("file:///a", "1"),
        SourceObject("file:///b", "2"),
        SourceObject("file:///d", "1"),
    ]
    changes = diff_listing(previous, current)
    assert [o.uri for o in changes.added] == ["file:///d"]
    assert [o.uri for o in changes.changed] == ["file:///b"]
    assert changes.removed == ["file:///c"]


def test_contiguous_ranges_groups_neighbours():
    ordered = ["a", "b", "c", "d", "e", "f"]
    assert contiguous_ranges(ordered, ["b", "c", "e", "zz"]) == [("b", "c"), ("e", "e")]
    assert contiguous_ranges(ordered, []) == []
    assert contiguous_ranges(ordered, ordered) == [("a", "f")]


def test_shard_ranges_become_one_run_past_the_limit():
    shards = [f"{i:02x}" for i in range(256)]
    every_other = shards[: 2 * MAX_RANGES_PER_CHANGE : 2]
    assert shard_ranges(shards, every_other) == [(s, s) for s in every_other]
    assert shard_ranges(shards, [*every_other, "fe"]) == [("00", "fe")]
