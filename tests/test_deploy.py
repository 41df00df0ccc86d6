"""deploy/: the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields
are errors, offline), the RayService (a CRD: no schema in kubernetes-validate, so its pod templates are validated
as core PodTemplates and the rest is checked by structure here), the Serve configs against Ray Serve's own schema,
and the values that must agree across files (probes, drain, selectors, the HPA's metric)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest and the newest the manifests are checked against
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in documents(path)}


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path, version):
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_manifest_is_caught():
    deployment = by_kind(DEPLOY / "kubernetes" / "cpu.yaml")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_server_manifests_agree_with_the_server(name):
    from rerankrt.server.metrics import Metrics

    resources = by_kind(DEPLOY / "kubernetes" / name)
    deployment = resources["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = env_of(container)
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert resources["Service"]["spec"]["selector"] == labels
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    # probes on /health at the port the server listens on
    port = int(env["RERANKRT_PORT"])
    assert container["ports"][0]["containerPort"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # the drain: preStop, then up to --request-timeout for in-flight requests, inside the grace period
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env["RERANKRT_REQUEST_TIMEOUT"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    # the HPA scales this Deployment on a gauge /metrics exports
    hpa = resources["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    assert f"# TYPE {metric} gauge" in Metrics().render().decode()
    assert hpa["minReplicas"] >= 2  # with the PDB, a voluntary disruption leaves one pod serving
    assert resources["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    # the artifact volume, waited for (and on a GPU, its engine built) before the server starts
    assert all(init["volumeMounts"][0]["mountPath"] == "/engines" for init in pod["spec"]["initContainers"])
    assert env["RERANKRT_MODEL_PATH"].startswith("/engines/")
    if name == "gpu.yaml":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        build = pod["spec"]["initContainers"][-1]
        assert "rerankrt build-engine --if-missing" in " ".join(build["args"])
        assert build["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["RERANKRT_BUILD_ENGINE"] == "false"
        assert container["image"] == "rerankrt:gpu"
    else:
        assert "nvidia.com/gpu" not in str(container["resources"])
        assert env["RERANKRT_THREADS"] == container["resources"]["requests"]["cpu"]


def test_every_rerankrt_env_variable_is_a_serve_setting():
    from rerankrt.server.settings import ServeSettings

    paths = [*MANIFESTS, DEPLOY / "kuberay" / "rayservice.yaml"]
    names = set(re.findall(r"RERANKRT_[A-Z_]+", "\n".join(p.read_text() for p in paths)))
    assert names and {n.removeprefix("RERANKRT_").lower() for n in names} <= set(ServeSettings.model_fields)


def test_prometheus_adapter_rule_serves_the_hpas_metric():
    config = yaml.safe_load(
        by_kind(DEPLOY / "kubernetes" / "prometheus-adapter.yaml")["ConfigMap"]["data"]["config.yaml"]
    )
    rule = config["rules"][0]
    assert rule["seriesQuery"].startswith("rerankrt_queue_pairs{")
    assert rule["name"]["as"] == "rerankrt_queue_pairs"
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def serve_config(text: str):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.parse_obj(yaml.safe_load(text))


def check_serve_application(config) -> None:
    """The application's import path is ours and its args build the Ray Serve application."""
    pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")
    from rerankrt.server.ray_serve import APP_NAME, app_builder

    (app,) = config.applications
    assert app.name == APP_NAME and app.route_prefix == "/"
    assert app.import_path == "rerankrt.server.ray_serve:app_builder"
    built = app_builder(app.args)  # binds the deployment; no model is loaded
    assert type(built).__name__ == "Application"


def test_serve_config_file_is_a_valid_ray_serve_config():
    pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")
    check_serve_application(serve_config((DEPLOY / "ray" / "serve-config.yaml").read_text()))


def test_rayservice_structure_and_pod_templates():
    """RayService is a CRD (ray.io/v1): kubernetes-validate has no schema for it. Its pod templates are validated as
    core PodTemplates, its serveConfigV2 against Ray Serve's schema, the rest by the structure KubeRay expects."""
    pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")
    import ray

    from rerankrt.server.ray_serve import PROXY_CALLBACK

    (service,) = documents(DEPLOY / "kuberay" / "rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert set(service["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    config = serve_config(service["spec"]["serveConfigV2"])
    check_serve_application(config)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray (the pinned extra) must match
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())  # KubeRay: map of strings
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": group["template"]}
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(template, version, strict=True)
        for container in group["template"]["spec"]["containers"]:
            assert env_of(container)["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == PROXY_CALLBACK
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": config.http_options.port} in head["ports"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    args = config.applications[0].args
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert args["replica_gpus"] == 1 and gpus == 1
    cpus = float(workers["rayStartParams"]["num-cpus"])
    assert args["replica_cpus"] <= cpus
    assert args["autoscale_max_replicas"] <= workers["maxReplicas"] * gpus


def test_the_engine_init_step_fails_loudly_without_tensorrt(tmp_path):
    """gpu.yaml's init step: `build-engine --if-missing` on a machine that cannot build stops the pod (exit 2, the
    reason), rather than letting the server start without the engine."""
    from tests.support import rerankrt, write_fake_artifact

    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the step would build")
    except ImportError:
        pass
    result = rerankrt("build-engine", "--if-missing", write_fake_artifact(tmp_path / "artifact"))
    assert result.returncode == 2
    assert "TensorRT is not installed" in result.stderr
