"""Decompression-bomb benchmark: how fast, and in how much memory, `qpbot ingest` quarantines
a document that would unpack to far more than it weighs, and one over the chunk cap.

    .venv/bin/python bench/bench_bombs.py [--unpacked-mb 190] [--cap-text-mb 40]

Each case is a folder of the suspect file beside one small good Markdown file, ingested by
`qpbot ingest` into a fresh QPBOT_HOME, with the default settings:
- docx_bomb: a python-docx document whose word/document.xml unpacks to `--unpacked-mb` of
  one repeated paragraph (about 300 times smaller packed);
- pdf_bomb: a PDF whose page draws a Flate content stream of `--unpacked-mb`;
- chunk_cap: a Markdown file of `--cap-text-mb` of prose (under QPBOT_MAX_UNPACKED_MB), which
  makes more chunks than QPBOT_MAX_CHUNKS_PER_DOCUMENT.
A baseline ingests the good file alone, so what a case adds to the run is its difference
from the baseline. Peak memory is of the whole process tree (the ingest and its embedding
model child), sampled every 0.1 s, as bench_ingest.py measures it, and of the ingest process
alone (where documents are read). Each stage's seconds on the suspect file come from its
materialization's metadata. Also reported: how long `extract_document` takes to refuse each
bomb in this process, and, for the DOCX bomb, what extracting it costs with the limits
lifted (a child process; the run would then go on to clean, chunk and embed its text).
Writes bench/results/bombs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pymupdf
from bench_ingest import timed_ingest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import dagster as dg  # noqa: E402 (after the path above)
from document_bombs import docx_bomb, pdf_bomb  # noqa: E402

from qpbot_assets.documents.extraction import (  # noqa: E402
    DocumentLimits,
    UnreadableDocument,
    extract_document,
)
from qpbot_assets.documents.sources import document_id_for  # noqa: E402
from qpbot_assets.runtime.instance import get_instance  # noqa: E402
from qpbot_serving.settings import QpbotSettings  # noqa: E402

STAGES = ("raw_document", "extracted_text", "cleaned_text", "document_metadata", "chunks")

GOOD = "# Travel\n\nTrain tickets are refunded in full; taxis only after 22:00.\n"
WORDS = (
    "pump valve pressure flow litre minute seal bearing motor shaft inlet outlet filter "
    "service interval warranty replace inspect torque gasket housing impeller rated"
).split()

UNGUARDED = """
import resource, sys, time
from pathlib import Path
from qpbot_assets.documents.extraction import DocumentLimits, extract_document
lifted = DocumentLimits(max_unpacked_bytes=2**40, max_compression_ratio=1e9)
started = time.perf_counter()
document = extract_document(Path(sys.argv[1]), limits=lifted)
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      sum(len(block.text) for block in document.blocks))
"""


def prose(path: Path, megabytes: float) -> Path:
    """Paragraphs of random manual-like sentences: text that chunks like a real manual."""
    rng = random.Random(0)
    with path.open("w") as out:
        written = 0
        while written < megabytes * 2**20:
            sentences = (
                " ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + "."
                for _ in range(rng.randint(3, 8))
            )
            paragraph = " ".join(sentences) + "\n\n"
            written += out.write(paragraph)
    return path


def unpacked_bytes(path: Path) -> int:
    if path.suffix == ".docx":
        return sum(member.file_size for member in zipfile.ZipFile(path).infolist())
    if path.suffix == ".pdf":
        pdf = pymupdf.open(path)
        return sum(len(pdf.xref_stream(xref)) for xref in pdf[0].get_contents())
    return path.stat().st_size


def stage_seconds(home: Path, path: Path) -> dict[str, float]:
    """Seconds each per-document stage of the ingest spent on the file at `path`, as the
    stages record them on the document's materializations."""
    instance = get_instance(QpbotSettings(home=home))
    partition = document_id_for(path.resolve().as_uri())
    seconds = {}
    for stage in STAGES:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(stage), asset_partitions=[partition]),
            limit=1,
        )
        if found.records and "seconds" in found.records[0].asset_materialization.metadata:
            seconds[stage] = found.records[0].asset_materialization.metadata["seconds"].value
    return seconds


def refusal_seconds(path: Path) -> tuple[float, str | None]:
    started = time.perf_counter()
    try:
        extract_document(path, limits=DocumentLimits())
    except UnreadableDocument as problem:
        return time.perf_counter() - started, problem.reason
    return time.perf_counter() - started, None


def ingest_case(tmp: Path, name: str, suspect: Path | None) -> dict:
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    (folder / "policy.md").write_text(GOOD)
    seconds, peak_mb, ingest_peak_mb, status = timed_ingest(tmp / f"home-{name}", folder)
    case = {
        "ingest_s": round(seconds, 2),
        "peak_rss_mb": round(peak_mb),
        "peak_rss_mb_ingest_process": round(ingest_peak_mb),
        "documents": status["documents"],
        "indexed_documents": status["documents"] - len(status["quarantined"]),
        "chunks": status["chunks"],
    }
    if suspect is not None:
        case = {
            "file_bytes": suspect.stat().st_size,
            "unpacked_bytes": unpacked_bytes(suspect),
            **case,
            "quarantined": [
                {key: q[key] for key in ("stage", "kind", "reason")} for q in status["quarantined"]
            ],
            "stage_s": stage_seconds(tmp / f"home-{name}", suspect),
        }
        if suspect.suffix != ".md":
            refused_s, _ = refusal_seconds(suspect)
            case["extract_refusal_s"] = round(refused_s, 4)
    print(f"{name}: {json.dumps(case)}", file=sys.stderr)
    return case


def unguarded_extraction(path: Path) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", UNGUARDED, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    seconds, max_rss_kb, characters = run.stdout.split()
    return {
        "extract_s": round(float(seconds), 1),
        "peak_rss_mb": round(int(max_rss_kb) / 1024),
        "characters": int(characters),
    }


def machine() -> dict:
    """The CPU's model, core count and vector flags (AVX2, AVX-512, BF16, AMX)."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    wanted = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}
    return {
        "cpu": fields.get("model name", ""),
        "cores": os.cpu_count(),
        "flags": sorted(wanted & set(fields.get("flags", "").split())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unpacked-mb", type=float, default=190, help="the bombs' unpacked size")
    parser.add_argument("--cap-text-mb", type=float, default=40, help="the chunk-cap case's text")
    parser.add_argument("--skip-unguarded", action="store_true", help="no lifted-limits run")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "bombs.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("docx_bomb", "pdf_bomb", "chunk_cap"):
            (tmp / name).mkdir()
        docx = docx_bomb(tmp / "docx_bomb" / "report.docx", args.unpacked_mb)
        pdf = pdf_bomb(tmp / "pdf_bomb" / "scan.pdf", args.unpacked_mb)
        manual = prose(tmp / "chunk_cap" / "manual.md", args.cap_text_mb)
        report = {
            "machine": machine(),
            "baseline": ingest_case(tmp, "baseline", None),
            "docx_bomb": ingest_case(tmp, "docx_bomb", docx),
            "pdf_bomb": ingest_case(tmp, "pdf_bomb", pdf),
            "chunk_cap": ingest_case(tmp, "chunk_cap", manual),
        }
        if not args.skip_unguarded:
            report["docx_bomb"]["unguarded_extraction"] = unguarded_extraction(docx)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
