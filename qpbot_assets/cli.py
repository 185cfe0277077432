"""The `qpbot` command line: ingest files, show status, run the Dagster UI, evaluate retrieval
and answers."""

from __future__ import annotations

import argparse
import gc
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from qpbot_serving.settings import QpbotSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qpbot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser(
        "ingest", help="ingest files or folders, or the rows of a database table, into the index"
    )
    ingest.add_argument("paths", nargs="*", type=Path)
    ingest.add_argument("--json", action="store_true", help="print one JSON object")
    table = ingest.add_argument_group(
        "a database table instead of paths",
        "one document per row; new and changed rows are ingested, deleted rows removed",
    )
    table.add_argument("--sql", metavar="URL", help="SQLAlchemy URL of the database")
    table.add_argument("--table", help="table (or view) name, optionally schema.table")
    table.add_argument("--id-column", help="a unique id per row")
    table.add_argument("--text-column", help="the document's text (read as Markdown)")
    table.add_argument("--title-column")
    table.add_argument("--updated-column", help="changes whenever the row does (updated_at)")
    table.add_argument(
        "--metadata-columns", nargs="+", default=[], metavar="C", help="front matter columns"
    )

    status = commands.add_parser("status", help="documents, chunks, quarantine, index version")
    status.add_argument("--json", action="store_true", help="print one JSON object")

    dev = commands.add_parser("dev", help="run the Dagster UI and daemon (sensors, automation)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--daemon-only", action="store_true", help="sensors and automation, no UI")

    evaluate = commands.add_parser("eval", help="measure quality on a benchmark")
    evaluations = evaluate.add_subparsers(dest="evaluation", required=True)
    retrieval = evaluations.add_parser(
        "retrieval", help="nDCG@10, recall@100, MRR@10 of the retriever on a BEIR dataset"
    )
    retrieval.add_argument("--corpus", type=Path, required=True, help="BEIR corpus.jsonl")
    retrieval.add_argument("--queries", type=Path, required=True, help="BEIR queries .jsonl")
    retrieval.add_argument("--qrels", type=Path, required=True, help="BEIR qrels .tsv")
    retrieval.add_argument("--mode", choices=["dense", "keyword", "hybrid"], default="hybrid")
    retrieval.add_argument(
        "--home",
        type=Path,
        help="index here (reused when it already holds this corpus); default: a temporary one",
    )
    retrieval.add_argument("--json", action="store_true", help="print one JSON object")
    qa = evaluations.add_parser(
        "qa",
        help="whether retrieved context holds the reference answers, and how close generated "
        "answers come to them, on the index of --home (or QPBOT_HOME)",
    )
    qa.add_argument("--questions", type=Path, required=True, help='JSONL of {"question", "answer"}')
    qa.add_argument("--home", type=Path, help="QPBOT_HOME whose promoted index is searched")
    qa.add_argument("--k", type=int, default=5, help="chunks retrieved per question")
    qa.add_argument("--mode", choices=["dense", "keyword", "hybrid"], default="hybrid")
    qa.add_argument("--limit", type=int, help="score only the first N questions")
    qa.add_argument("--no-generate", action="store_true", help="score retrieval only")
    qa.add_argument("--details", type=Path, help="write one JSON line per question here")
    qa.add_argument("--json", action="store_true", help="print one JSON object")

    gate = commands.add_parser(
        "gate",
        help="compare what would be deployed with the champion on the evaluation sets; "
        "exit 0 passed, 1 refused (worse beyond noise), 2 cannot run as configured",
    )
    gate.add_argument("--json", action="store_true", help="print the comparison as JSON")
    gate.add_argument(
        "--accept",
        action="store_true",
        help="when it passes, record it as the champion (QPBOT_GATE_CHAMPION)",
    )
    gate.add_argument(
        "--require-champion",
        action="store_true",
        help="refuse when there is no champion record (instead of passing as the baseline)",
    )

    rollback = commands.add_parser(
        "rollback", help="undo the last promotion of a fine-tuned embedder and its index"
    )
    rollback.add_argument("--json", action="store_true", help="print one JSON object")

    serve = commands.add_parser("serve", help="run the answer service (HTTP API)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    args = parser.parse_args(argv)
    settings = QpbotSettings()
    if args.command == "eval" and args.evaluation == "qa":
        return _eval_qa(settings, args)
    if args.command == "eval":
        return _eval_retrieval(settings, args)
    if args.command == "ingest" and (args.sql is None) == (not args.paths):
        ingest.error("give either paths or --sql URL (with --table, --id-column, --text-column)")
    if args.command == "ingest" and args.sql:
        return _ingest_table(settings, args)
    if args.command == "ingest":
        return _ingest(settings, args.paths, as_json=args.json)
    if args.command == "status":
        return _status(settings, as_json=args.json)
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "gate":
        return _gate(settings, args)
    if args.command == "rollback":
        return _rollback(settings, as_json=args.json)
    return _dev(settings, args.host, args.port, daemon_only=args.daemon_only)


def _ingest(settings: QpbotSettings, paths: list[Path], as_json: bool) -> int:
    from qpbot_assets.runtime.runs import ingest_paths

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"qpbot ingest: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = ingest_paths(settings, paths, quiet=as_json)
    what = f"{summary['documents']} documents from {len(paths)} path(s)"
    return _report_ingest(settings, summary, what, as_json)


# The flag behind each field of a SqlSource, for error messages.
TABLE_FLAGS = {"url": "--sql", "metadata_columns": "--metadata-columns"}


def _ingest_table(settings: QpbotSettings, args: argparse.Namespace) -> int:
    """Ingests the rows of one table (`--sql URL --table ...`), as the SQL sensor would."""
    from qpbot_assets.documents.sql_source import SqlSourceError
    from qpbot_assets.runtime.runs import ingest_sql
    from qpbot_serving.settings import SqlSource

    required = {
        "--table": args.table,
        "--id-column": args.id_column,
        "--text-column": args.text_column,
    }
    missing = [flag for flag, value in required.items() if not value]
    if missing:
        print(f"qpbot ingest --sql: also give {', '.join(missing)}", file=sys.stderr)
        return 2
    source = SqlSource(
        url=args.sql,
        table=args.table,
        id_column=args.id_column,
        text_column=args.text_column,
        title_column=args.title_column,
        updated_column=args.updated_column,
        metadata_columns=args.metadata_columns,
    )
    try:
        summary = ingest_sql(
            settings,
            source,
            quiet=args.json,
            setting=lambda field: TABLE_FLAGS.get(field, "--" + field.replace("_", "-")),
        )
    except SqlSourceError as problem:
        print(f"qpbot ingest: {problem}", file=sys.stderr)
        return 2
    what = f"{summary['documents']} rows of {args.table}"
    return _report_ingest(settings, summary, what, args.json)


def _report_ingest(settings: QpbotSettings, summary: dict, what: str, as_json: bool) -> int:
    from qpbot_assets.runtime.runs import index_status

    status = index_status(settings)
    if as_json:
        print(json.dumps({**status, "ingest": summary}))
    else:
        print(
            f"{what}: {summary['new']} new, {summary['removed']} removed, "
            f"{summary['runs']} run(s) ({'succeeded' if summary['success'] else 'FAILED'})"
        )
        _print_status(status)
    return 0 if summary["success"] else 1


def _status(settings: QpbotSettings, as_json: bool) -> int:
    from qpbot_assets.runtime.runs import index_status

    status = index_status(settings)
    if as_json:
        print(json.dumps(status))
    else:
        _print_status(status)
    return 0


def _failure_reason(run) -> str:
    """What failed an in-process run: a dg.Failure's description, else the error's message."""
    for event in run.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            if data.error:
                return data.error.message.strip()
    return "the run failed: see it in the Dagster UI"


def _rollback(settings: QpbotSettings, as_json: bool) -> int:
    """Runs the rollback_embedder job (the previous champion's embedder, index pointer and
    MLflow alias come back), then a refresh run that syncs documents ingested since into
    the restored index. The service follows within seconds."""
    from qpbot_assets.runtime.instance import get_instance
    from qpbot_assets.runtime.runs import execute_job, load_definitions, refresh_index

    run = execute_job(load_definitions(), "rollback_embedder", get_instance(settings))
    if not run.success:
        print(f"qpbot rollback: {_failure_reason(run)}", file=sys.stderr)
        return 1
    result = run.output_for_node("rollback_promotion")
    result["embedding_model"] = result["embedding_model"] or settings.embedding_model
    result["index_version"] = refresh_index(settings)
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"rolled back {result['rolled_back']}; serving {result['index_version']} "
            f"embedded with {result['embedding_model']}"
        )
    return 0


def _gate(settings: QpbotSettings, args: argparse.Namespace) -> int:
    """Scores what would be deployed and compares it with the champion's record
    (qpbot_assets.evaluation.deployment_gate). Exit 0: passed (or the first baseline); 1: refused; 2:
    the gate cannot run (a setting is missing or wrong, or the evaluation failed)."""
    from qpbot_assets.evaluation.deployment_gate import (
        GateMisconfigured,
        champion_location,
        compare_with_champion,
        evaluate_deployment,
        format_verdict,
        load_champion,
        record_champion,
    )

    try:
        champion = load_champion(settings)
        candidate = evaluate_deployment(settings)
    except Exception as problem:  # exit 1 must mean "refused", never a crash
        message = str(problem)
        if not isinstance(problem, GateMisconfigured):
            message = f"the evaluation failed: {type(problem).__name__}: {problem}"
        print(f"qpbot gate: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"passed": False, "error": message}))
        return 2
    verdict = compare_with_champion(candidate, champion, args.require_champion)
    verdict["champion_record"] = champion_location(settings)
    verdict["accepted"] = bool(args.accept and verdict["passed"])
    if verdict["accepted"]:
        record_champion(settings, candidate)
    if args.json:
        print(json.dumps(verdict))
    else:
        print(format_verdict(verdict))
        if verdict["accepted"]:
            print(f"recorded as the champion: {verdict['champion_record']}")
    return 0 if verdict["passed"] else 1


def _eval_retrieval(settings: QpbotSettings, args: argparse.Namespace) -> int:
    """Indexes the corpus (one row per document) with the configured embedding model into
    --home or a throw-away home, then runs the queries through the serving retriever."""
    import tempfile

    from qpbot_assets.evaluation.beir import index_beir_corpus, indexed_corpus
    from qpbot_serving.embedding import Embedder, resolve_backend
    from qpbot_serving.evaluation import evaluate_retriever
    from qpbot_serving.retrieval import Retriever
    from qpbot_serving.state import CORPUS_MARKER, PROMOTED_INDEX, StateStore

    missing = [str(p) for p in (args.corpus, args.queries, args.qrels) if not p.is_file()]
    if missing:
        print(f"qpbot eval retrieval: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="qpbot-eval-") as scratch:
        home = args.home.expanduser().resolve() if args.home else Path(scratch)
        model = settings.embedding_model
        backend = resolve_backend(settings.embedding_backend)
        exports = settings.embedding_exports_dir
        promoted = indexed_corpus(args.corpus, home, model, backend=backend)
        reused = promoted is not None
        state = StateStore(home)
        if not reused and state.read(PROMOTED_INDEX) and state.read(CORPUS_MARKER) is None:
            # never overwrite the index of a real home (documents ingested by `qpbot ingest`)
            print(
                f"qpbot eval retrieval: {home} holds a document index, not an evaluation index; "
                "give --home an empty folder (or leave it out)",
                file=sys.stderr,
            )
            return 2
        if not reused:
            embedder = Embedder(model, backend=backend, cache_dir=exports)
            promoted = index_beir_corpus(args.corpus, home, model, embedder)
        retriever = Retriever.open(home, backend=backend, exports_dir=exports)
        result = {
            **evaluate_retriever(retriever, args.queries, args.qrels, mode=args.mode),
            "mode": args.mode,
            "index": promoted.label,
            "documents": promoted.documents,
            "embedding_model": model,
            "embedding_backend": backend,
            "reused_index": reused,
        }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.mode}: nDCG@10 {result['ndcg@10']:.4f}  recall@100 {result['recall@100']:.4f}"
            f"  MRR@10 {result['mrr@10']:.4f}  over {result['queries']} queries "
            f"({result['documents']} documents, {model})"
        )
    return 0


def _eval_qa(settings: QpbotSettings, args: argparse.Namespace) -> int:
    """Runs the answer evaluation (qpbot_assets.learning.qa_eval) against an existing index,
    with the retriever and generator the service would use."""
    import time

    from qpbot_assets.learning.qa_eval import evaluate_qa, read_qa_set, result_rows
    from qpbot_serving.answering import AnswerPolicy
    from qpbot_serving.generation import build_generator
    from qpbot_serving.retrieval import IndexNotReady, Retriever

    if args.home:
        settings = QpbotSettings(home=args.home)
    if not args.questions.is_file():
        print(f"qpbot eval qa: no such file: {args.questions}", file=sys.stderr)
        return 2
    try:
        retriever = Retriever.from_settings(settings)
    except IndexNotReady as problem:
        print(f"qpbot eval qa: {problem}", file=sys.stderr)
        return 2
    items = read_qa_set(args.questions)[: args.limit]
    generator = None if args.no_generate else build_generator(settings)
    started = time.perf_counter()
    summary, results = evaluate_qa(
        retriever,
        items,
        k=args.k,
        mode=args.mode,
        generator=generator,
        policy=AnswerPolicy.from_settings(settings),
    )
    result = {
        **summary,
        "index": retriever.promoted.label,
        "generator": generator.model_name if generator else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.details:
        rows = result_rows(results)
        args.details.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if args.json:
        print(json.dumps(result))
    else:
        similarity = result["answer_similarity"]
        print(
            f"{result['questions']} questions on {result['index']}: context holds the answer "
            f"{result['context_holds_answer']:.3f} (top {args.k}: "
            f"{result['retrieved_holds_answer']:.3f}), answer similarity "
            f"{'-' if similarity is None else f'{similarity:.3f}'}"
        )
    return 0


def _print_status(status: dict) -> None:
    print(
        f"documents: {status['documents']}  chunks: {status['chunks']}  index: {status['index_version']}"
    )
    for item in status["quarantined"]:
        print(f"  quarantined at {item['stage']}: {item['source']}\n      {item['reason']}")


def _dev(settings: QpbotSettings, host: str, port: int, daemon_only: bool = False) -> int:
    """Starts dagster-daemon (sensors, automation, run queue) and dagster-webserver (the UI);
    Ctrl-C or SIGTERM stops both."""
    from qpbot_assets.runtime.instance import configure_environment

    configure_environment(settings)
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    bin_dir = Path(sys.executable).parent
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    processes = [subprocess.Popen([bin_dir / "dagster-daemon", "run", "-w", workspace])]
    if not daemon_only:
        processes.append(
            subprocess.Popen(
                [bin_dir / "dagster-webserver", "-h", host, "-p", str(port), "-w", workspace]
            )
        )
        print(f"Dagster UI: http://{host}:{port}", flush=True)
    print(
        f"Inbox (files dropped here are ingested): {settings.inbox_dir}\n"
        f"QPBOT_HOME={settings.home}   Ctrl-C stops.",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    return 0


def _serve(settings: QpbotSettings, host: str, port: int) -> int:
    from qpbot_serving.server import serve

    print(
        f"Answer service: http://{host}:{port}  (API docs: http://{host}:{port}/docs)", flush=True
    )
    if "*" not in settings.allowed_hosts:
        print(
            f"It answers to {', '.join(settings.allowed_hosts)} only (QPBOT_ALLOWED_HOSTS): "
            "add the names clients use to reach it.",
            flush=True,
        )
    serve(settings, host, port)
    return 0


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the children the same way Ctrl-C does


def run() -> None:
    """The `qpbot` console script."""
    code = main()
    # Interpreter exit would walk every object torch and Dagster made (2.1 s after an ingest);
    # the work is done and written, so exempt them from that last collection.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
