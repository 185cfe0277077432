"""The learning loop, end to end, with simulated users on SciFact.

    .venv/bin/python bench/bench_learning_loop.py [--home /tmp/qpbot_loop_home]

1. Index the SciFact corpus (5,183 abstracts) with the default model (`qpbot eval
   retrieval --home`, reused when already there).
2. Split the train queries that have qrels in two halves (seeded shuffle). nDCG@10 of the
   second half, dense and hybrid, is measured before.
3. Start the answer service (`qpbot serve`) and ask every question of the first half
   through `POST /v1/answer` (k=5); a simulated user rates each answer up when one of its
   cited sources is relevant by the qrels (else down) and judges every source the answer
   shows: the cited ones and the `more_sources` retrieved past the prompt's budget.
4. Evaluate the feedback sensor as the daemon does; it asks for `retrain_embedder`, which
   runs (feedback_events -> training_pairs -> fine_tuned_embedder -> candidate_index ->
   gate -> promoted_candidate). Only the gate decides whether the candidate is promoted.
5. nDCG@10 of the second half, dense and hybrid, after.
6. A deliberately bad candidate (trained on shuffled pairs, launched by hand) must be
   refused by the gate, leaving the pointer where it was.

The generator is asked for one token only (QPBOT_ANSWER_MAX_NEW_TOKENS=1): the loop learns
from retrieval judgments, and the full answers would add ~15 minutes of CPU generation
without changing what is learned. Results go to bench/results/learning_loop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


def run_qpbot(*args: str, env: dict) -> str:
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "qpbot"), *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"qpbot {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def ndcg(home: Path, queries: dict[str, str], qrels: dict) -> dict[str, float]:
    from qpbot_serving.evaluation import evaluate_rankings
    from qpbot_serving.retrieval import Retriever

    retriever = Retriever.open(home)
    scores = {"index": retriever.promoted.label}
    for mode in ("dense", "hybrid"):
        rankings = {
            q: [hit.document_id for hit in retriever.search(text, k=100, mode=mode)]
            for q, text in queries.items()
        }
        scores[mode] = round(evaluate_rankings(rankings, qrels)["ndcg@10"], 4)
    return scores


def ask_and_judge(port: int, queries: dict[str, str], qrels: dict) -> dict:
    counts = {"answers": 0, "up": 0, "down": 0, "judged_relevant": 0, "judged_irrelevant": 0}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for query_id, text in tqdm(queries.items(), desc="simulated users", unit="question"):
            answer = client.post("/v1/answer", json={"query": text, "k": 5}).raise_for_status()
            body = answer.json()
            relevant = qrels.get(query_id, {})
            judgments = {
                c["chunk_id"]: "relevant" if relevant.get(c["document_id"], 0) > 0 else "irrelevant"
                for c in [*body["citations"], *body["more_sources"]]
            }
            cited = [judgments[c["chunk_id"]] for c in body["citations"]]
            rating = "up" if "relevant" in cited else "down"  # the answer had what it needed
            client.post(
                "/v1/feedback",
                json={
                    "answer_id": body["answer_id"],
                    "rating": rating,
                    "source_judgments": judgments,
                },
            ).raise_for_status()
            counts["answers"] += 1
            counts[rating] += 1
            for verdict in judgments.values():
                counts[f"judged_{verdict}"] += 1
    return counts


def feedback_counts(home: Path) -> dict:
    """What an earlier run's simulated users left in the feedback database."""
    import sqlalchemy as sa

    from qpbot_serving.answer_log import answers, engine_for, feedback

    engine = engine_for(f"sqlite:///{home / 'feedback.db'}")
    with engine.connect() as connection:
        ratings = connection.execute(sa.select(feedback.c.rating)).scalars().all()
        judged = connection.execute(sa.select(feedback.c.source_judgments)).scalars().all()
        total = connection.execute(sa.select(sa.func.count()).select_from(answers)).scalar()
    verdicts = [v for j in judged for v in (j or {}).values()]
    return {
        "answers": total,
        "up": ratings.count("up"),
        "down": ratings.count("down"),
        "judged_relevant": verdicts.count("relevant"),
        "judged_irrelevant": verdicts.count("irrelevant"),
    }


def serve(home: Path, port: int, env: dict) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "qpbot"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit("the answer service did not become ready in 5 minutes")


def retrain(run_config: dict | None, use_sensor: bool) -> dict:
    """Like the daemon: evaluate the feedback sensor and launch the run it requests (or,
    with use_sensor=False, launch the job by hand as from the UI's launchpad)."""
    import dagster as dg

    from qpbot_assets.defs.feedback.sensors import feedback_sensor
    from qpbot_assets.runtime.instance import get_instance
    from qpbot_assets.runtime.runs import load_definitions
    from qpbot_serving.settings import QpbotSettings

    settings = QpbotSettings()
    defs = load_definitions()
    instance = get_instance(settings)
    tags = {}
    if use_sensor:
        context = dg.build_sensor_context(instance=instance, resources=defs.resources)
        request = feedback_sensor(context)
        if not isinstance(request, dg.RunRequest):
            raise SystemExit(f"the feedback sensor did not ask for retraining: {request}")
        tags = {**request.tags, "dagster/run_key": request.run_key}
    started = time.perf_counter()
    result = defs.resolve_job_def("retrain_embedder").execute_in_process(
        instance=instance, run_config=run_config or {}, tags=tags, raise_on_error=False
    )
    checks = result.get_asset_check_evaluations()
    candidate = json.loads((settings.index_dir / "CANDIDATE.json").read_text())
    return {
        "run_success": result.success,
        "reason": tags.get("qpbot/retrain-reason", "launched by hand"),
        "gate_passed": [c.passed for c in checks],
        "gate": {k: v for k, v in candidate.get("gate", {}).items() if k != "table"},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/qpbot_loop_home"))
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the index and the feedback an earlier run left in --home (skip steps 1 and 3)",
    )
    args = parser.parse_args()
    home = args.home.resolve()
    env = {
        **os.environ,
        "QPBOT_HOME": str(home),
        "QPBOT_ANSWER_MAX_NEW_TOKENS": "1",
        "PYTHONPATH": str(REPO),
    }
    os.environ.update(env)

    from qpbot_serving.evaluation import read_qrels, read_queries

    baseline = None
    if not args.resume:
        print("indexing SciFact (reused when present) ...", flush=True)
        baseline = json.loads(
            run_qpbot(
                "eval",
                "retrieval",
                "--json",
                "--home",
                str(home),
                "--corpus",
                str(SCIFACT / "corpus.jsonl"),
                "--queries",
                str(SCIFACT / "queries-train.jsonl"),
                "--qrels",
                str(SCIFACT / "qrels-train.tsv"),
                env=env,
            )
        )
    queries = read_queries(SCIFACT / "queries-train.jsonl")
    qrels = read_qrels(SCIFACT / "qrels-train.tsv")
    judged = sorted(q for q in queries if any(g > 0 for g in qrels.get(q, {}).values()))
    random.Random(args.seed).shuffle(judged)
    half = len(judged) // 2
    users = {q: queries[q] for q in judged[:half]}
    held_out = {q: queries[q] for q in judged[half:]}

    before = ndcg(home, held_out, qrels)
    print(f"before, on the held-out half ({len(held_out)} queries): {before}", flush=True)

    if args.resume:
        feedback = feedback_counts(home)
    else:
        service = serve(home, args.port, env)
        try:
            feedback = ask_and_judge(args.port, users, qrels)
        finally:
            service.terminate()
            service.wait(timeout=60)
    print(f"feedback: {feedback}", flush=True)

    good = retrain(None, use_sensor=True)
    print(f"retraining from the sensor: {good}", flush=True)
    after = ndcg(home, held_out, qrels)
    print(f"after: {after}", flush=True)

    # One epoch is enough to show the gate at work and saves ~8 minutes of CPU.
    shuffled = {"ops": {"fine_tuned_embedder": {"config": {"shuffle_labels": True, "epochs": 1}}}}
    bad = retrain(shuffled, use_sensor=False)
    print(f"a candidate trained on shuffled pairs: {bad}", flush=True)

    from qpbot_serving.state import PROMOTED_INDEX, StateStore

    still = StateStore(home).read(PROMOTED_INDEX).label

    results = {
        "command": "bench/bench_learning_loop.py " + " ".join(sys.argv[1:]),
        "corpus_baseline_train_all": baseline,
        "users_queries": len(users),
        "held_out_queries": len(held_out),
        "feedback": feedback,
        "before": before,
        "retraining": good,
        "after": after,
        "gain_points": {m: round(100 * (after[m] - before[m]), 2) for m in ("dense", "hybrid")},
        "bad_candidate": bad,
        "pointer_after_bad_candidate": still,
        "pointer_unchanged_by_bad_candidate": still == after["index"],
    }
    out = REPO / "bench" / "results" / "learning_loop.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
