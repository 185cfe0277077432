"""Moving the champion: which embedder and index the service uses, and the way back.

The promoted pointer (`PROMOTED.json`) names the table and version the service reads;
`EMBEDDER.json` names the fine-tuned model that new chunks are embedded with. A promotion
moves both and appends what they were before to `PROMOTIONS.jsonl`, so a rollback puts
exactly that back. No Dagster here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from qpbot_serving import index as contract

HISTORY_FILE = "PROMOTIONS.jsonl"


def read_embedder(index_dir: Path) -> dict | None:
    path = index_dir / contract.EMBEDDER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def promote_candidate(index_dir: Path, snapshot: dict, embedder: dict) -> contract.PromotedIndex:
    """Points the service at the candidate table (`snapshot`) and ingestion at its model
    (`embedder`: {"model", "base_model", "mlflow_version", ...}); remembers the previous
    champion for `rollback`."""
    previous_pointer = contract.read_promoted(index_dir)
    entry = {
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "embedder": embedder,
        "snapshot": snapshot,
        "previous_embedder": read_embedder(index_dir),
        "previous_pointer": asdict(previous_pointer) if previous_pointer else None,
    }
    with open(index_dir / HISTORY_FILE, "a") as history:
        history.write(json.dumps(entry) + "\n")
    contract.atomic_write_json(index_dir / contract.EMBEDDER_FILE, embedder)
    return contract.write_promoted(index_dir, **snapshot)


def rollback(index_dir: Path) -> dict:
    """Undoes the last promotion: the previous embedder and pointer come back. Returns the
    history entry undone. Raises LookupError when there is nothing to roll back."""
    path = index_dir / HISTORY_FILE
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not entries:
        raise LookupError("nothing to roll back: no candidate has been promoted here")
    last = entries.pop()
    embedder_path = index_dir / contract.EMBEDDER_FILE
    if last["previous_embedder"]:
        contract.atomic_write_json(embedder_path, last["previous_embedder"])
    else:
        embedder_path.unlink(missing_ok=True)  # back to the configured model itself
    if last["previous_pointer"]:
        pointer = {k: v for k, v in last["previous_pointer"].items() if k != "promoted_at"}
        contract.write_promoted(index_dir, **pointer)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    tmp.replace(path)
    return last
