"""Monitoring (issue 15): the alert rules under promtool (checked, and unit-tested firing and
not firing), the platform snapshot the Dagster sensor writes for /metrics, and a real
Prometheus (Debian's binary) scraping a running service: a generator that is down makes an
alert go pending or firing, and every Grafana panel's query returns a series.

The rules keep their production `for:` durations; the live Prometheus loads a copy with
every `for:` set to 1 s, so that a fault shows within seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import dagster as dg
import httpx
import pytest
import yaml
from conftest import REPO, free_port, ingest_into, need, running_service

from qpbot_serving.metrics import read_platform_metrics
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import StateStore

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "qpbot.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules" / "qpbot.rules.test.yml"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
NOT_INSTALLED = "not installed (Debian's prometheus package: `make prometheus` as root)"
QUESTION = "How many days before departure must flights be booked?"


def promtool() -> str:
    path = shutil.which("promtool")
    need(path is not None, f"promtool {NOT_INSTALLED}")
    return path


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- the rule files ------------------------------------------------------------------------
def test_rules_pass_promtool_check_and_their_unit_tests():
    tool = promtool()
    for command in (
        [tool, "check", "rules", str(RULES)],
        [tool, "test", "rules", str(RULE_TESTS)],
        [tool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_for_severity_summary_runbook_and_tests_firing_and_not():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing, quiet = set(), set()
    for case in (case for group in tests for case in group["alert_rule_test"]):
        (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], name
        assert name in firing and name in quiet, f"{name}: unit-test it firing and not firing"


def test_dashboards_are_what_the_script_makes(tmp_path):
    script = REPO / "deploy" / "grafana" / "make_dashboards.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=60)
    made = {path.name: path.read_text() for path in tmp_path.glob("*.json")}
    kept = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert made == kept, "run `python deploy/grafana/make_dashboards.py` and commit the JSON"


def test_the_snapshot_counts_runs_and_a_gates_refusals_in_a_row():
    from qpbot_assets.defs.monitoring.sensors import fold_run

    snapshot = {"runs": {}, "drift": {}, "gates": {}}
    nothing = {"documents": 0, "quarantined": 0, "drift": {}, "gate_decisions": []}
    # Retraining runs: refused, refused, failed before the gate, passed, refused.
    for ended, status, passed in [
        (1, "success", False),
        (2, "success", False),
        (3, "failure", None),
        (4, "success", True),
        (5, "success", False),
    ]:
        run = {"run_id": str(ended), "job": "retrain_embedder", "status": status}
        decisions = [] if passed is None else [("embedder", passed)]
        fold_run(snapshot, {**nothing, **run, "ended_at": ended, "gate_decisions": decisions})
    assert snapshot["runs"] == {"retrain_embedder": {"success": 4, "failure": 1}}
    gate = {"passed": 1, "refused": 3, "refused_in_a_row": 1, "last_at": 5}
    assert snapshot["gates"]["embedder"] == gate

    ingest = {"run_id": "6", "job": "ingest_documents", "status": "success", "ended_at": 6}
    fold_run(
        snapshot,
        {**nothing, **ingest, "documents": 10, "quarantined": 2, "drift": {"queries": 0.3}},
    )
    last = {"run_id": "6", "ended_at": 6, "documents": 10, "quarantined": 2}
    assert snapshot["last_ingest"] == last
    assert (snapshot["ingested_documents"], snapshot["quarantined_documents"]) == (10, 2)
    assert snapshot["drift"] == {"queries": {"share": 0.3, "at": 6}}


# --- a real Prometheus scraping a running service ---------------------------------------------
@dataclass
class Monitored:
    service: str  # the answer service's URL
    prometheus: str  # Prometheus's URL
    settings: QpbotSettings
    instance: dg.DagsterInstance

    def query(self, expr: str) -> list[dict]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def alerts(self) -> dict[str, str]:
        """alertname -> state (pending, firing) of the alerts Prometheus holds now."""
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/alerts", timeout=10) as response:
            alerts = json.load(response)["data"]["alerts"]
        return {alert["labels"]["alertname"]: alert["state"] for alert in alerts}

    definitions: dg.Definitions  # the code location, with resources for this home

    def tick_platform_sensor(self) -> dict:
        """One evaluation of the real platform_metrics_sensor against the home's instance."""
        sensor = self.definitions.resolve_sensor_def("platform_metrics_sensor")
        with dg.build_sensor_context(
            instance=self.instance,
            resources=self.definitions.resources,
            repository_def=self.definitions.get_repository_def(),
        ) as context:
            sensor(context)
        return read_platform_metrics(StateStore.from_settings(self.settings))


@dg.asset(name="drift_report")
def drift_report_with_drift() -> dg.MaterializeResult:
    """Stands in for the real drift_report (evidently takes tens of seconds): the same
    asset key and metadata, so the sensor reads a real materialization event."""
    return dg.MaterializeResult(
        metadata={"drift_computed": True, "documents/drift_share": 0.7, "queries/drift_share": 0.1}
    )


@dg.asset(name="candidate_index")
def candidate_index_stand_in() -> None:
    """Stands in for a candidate index, so that its gate's check can refuse it here."""


@dg.asset_check(asset=candidate_index_stand_in, name="candidate_at_least_as_good_as_champion")
def gate_refuses() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="worse than the champion")


def eventually(check, timeout: float, interval: float = 0.5):
    """Calls `check()` until it returns something true (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, sample_documents):
    """The sample travel policy and a damaged PDF ingested, a drift report and a refused
    candidate (stand-ins), the service running with its generator on a closed port
    (QPBOT_ANSWER_MODE=auto: answers fall back to quotes), the platform sensor ticked once,
    and Prometheus scraping the service every second."""
    prometheus = shutil.which("prometheus")
    need(prometheus is not None, f"prometheus {NOT_INSTALLED}")
    promtool()
    documents = tmp_path_factory.mktemp("monitored-docs")
    shutil.copy(sample_documents / "travel-and-expense-policy.md", documents)
    (documents / "damaged.pdf").write_bytes(b"%PDF-1.7\nnot a PDF after all")
    home = ingest_into(tmp_path_factory.mktemp("monitored-home"), documents)
    settings = QpbotSettings(
        home=home,
        answer_mode="auto",
        generator="openai",
        generator_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        generator_model="m",
    )
    from qpbot_assets.runtime.instance import get_instance
    from qpbot_assets.runtime.runs import load_definitions

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QPBOT_HOME", str(home))
        patch.delenv("DAGSTER_HOME", raising=False)
        instance = get_instance(settings)
        definitions = load_definitions()  # its resources read QPBOT_HOME
    stand_ins = [drift_report_with_drift, candidate_index_stand_in, gate_refuses]
    assert dg.materialize(stand_ins, instance=instance).success

    workdir = tmp_path_factory.mktemp("prometheus")
    # The rules as they are, but each `for:` 1 s; the example config, but every second.
    (workdir / "qpbot.rules.yml").write_text(re.sub(r"for: \S+", "for: 1s", RULES.read_text()))
    with running_service(settings) as service_port:
        service = f"http://127.0.0.1:{service_port}"
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(workdir / "qpbot.rules.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [service[len("http://") :]]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "prometheus.log").open("w"),
        )
        try:
            prometheus_url = f"http://127.0.0.1:{port}"
            monitored = Monitored(service, prometheus_url, settings, instance, definitions)
            monitored.tick_platform_sensor()

            def scraped():
                try:
                    return [s for s in monitored.query('up{job="qpbot"}') if s["value"][1] == "1"]
                except OSError:
                    return None

            assert eventually(scraped, 30), (workdir / "prometheus.log").read_text()[-2000:]
            yield monitored
        finally:
            process.terminate()
            process.wait(timeout=10)


def ask(monitored: Monitored, client: httpx.Client) -> dict:
    answer = client.post(f"{monitored.service}/v1/answer", json={"query": QUESTION})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_platform_snapshot_counts_runs_documents_quarantine_and_drift(monitored):
    snapshot = read_platform_metrics(StateStore.from_settings(monitored.settings))
    assert snapshot["runs"]["ingest_documents"] == {"success": 1}
    assert "retrain_embedder" in snapshot["runs"]  # every job, from zero
    assert snapshot["last_ingest"]["documents"] == 2
    assert snapshot["last_ingest"]["quarantined"] == 1
    assert snapshot["documents"] == {"live": 2, "quarantined": {"malformed": 1}}
    assert snapshot["drift"]["documents"]["share"] == 0.7
    assert snapshot["gates"]["embedder"]["refused"] == 1
    assert snapshot["gates"]["embedder"]["refused_in_a_row"] == 1
    documents = monitored.query("qpbot_documents_quarantined")
    assert [(s["metric"]["kind"], s["value"][1]) for s in documents] == [("malformed", "1")]


def test_a_generator_that_is_down_raises_an_alert_in_prometheus(monitored):
    assert "QpbotGeneratorFailing" not in monitored.alerts()
    with httpx.Client(timeout=30) as client:
        for _ in range(3):  # over a few scrapes, so that the fallbacks' rate is above zero
            body = ask(monitored, client)
            assert body["fallback"] and "unavailable" in body["error"]
            time.sleep(1)
    state = eventually(lambda: monitored.alerts().get("QpbotGeneratorFailing"), 20)
    assert state in {"pending", "firing"}, monitored.alerts()


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL) of every panel target, Grafana's variables filled in."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m")
                found.append((path.stem, panel["title"], expr))
    return found


def test_every_dashboard_panel_query_returns_a_series(monitored):
    with httpx.Client(timeout=30) as client:
        answer = ask(monitored, client)
        client.post(f"{monitored.service}/v1/search", json={"query": "battery", "k": 3})
        feedback = client.post(
            f"{monitored.service}/v1/feedback",
            json={"answer_id": answer["answer_id"], "rating": "up"},
        )
        assert feedback.status_code == 202, feedback.text
        written = eventually(
            lambda: (
                client.get(f"{monitored.service}/readyz").json()["answer_log"]["queued_rows"] == 0
            ),
            10,
        )
        assert written
    snapshot = monitored.tick_platform_sensor()
    assert snapshot["feedback"]["up_rate"] == 1.0
    assert snapshot["runs"]["ingest_documents"] == {"success": 1}  # no run counted twice
    queries = dashboard_queries()
    assert len(queries) >= 30
    missing = queries
    deadline = time.monotonic() + 20
    while missing and time.monotonic() < deadline:
        missing = [q for q in missing if not monitored.query(q[2])]
        time.sleep(1)
    assert not missing, missing
