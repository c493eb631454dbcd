"""Issue 21: docker/kuberay/, the KubeRay manifests, without a Kubernetes cluster.

Every pod template (the RayCluster's head and worker groups, the RayJob's submitter) is checked field by
field against the ``kubernetes`` Python client's models and then deserialized into a
``V1PodTemplateSpec``: a misspelt or misplaced field fails (the client's own deserializer silently drops
unknown keys, so the keys are walked first). The KubeRay-level fields are checked against KubeRay's
``ray.io/v1`` types. Then what the cluster needs: a GPU worker group, the image of docker/Dockerfile in
every container, the work folder on a ReadWriteMany volume at the same path in every pod, the datasets
read-only, credentials from a Secret on the head only, and no credential in plain text anywhere.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import shlex
import types
from pathlib import Path
from typing import Any

import os

import pytest
import yaml

try:
    from kubernetes import client
except ImportError:  # the `test` extra installs it; under CI (env CI set) it must be there
    if os.environ.get("CI"):
        raise
    pytest.skip("the kubernetes client is not installed (pip install -e '.[test]')", allow_module_level=True)

DOCKER = Path(__file__).resolve().parents[1] / "docker"
KUBERAY = DOCKER / "kuberay"
WORK_MOUNT, DATA_MOUNT = "/shared", "/data"
SECRET_NAMES = {"ALORE_DB", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "PGPASSWORD", "RAY_AUTH_TOKEN"}
SECRETISH = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_KEY", re.I)
USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", re.I)  # scheme://user:password@

# KubeRay's ray.io/v1 fields (ray-operator/apis/ray/v1/*_types.go, KubeRay 1.5).
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                   "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "authOptions",
                   "upgradeStrategy"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "numOfHosts",
                "rayStartParams", "template", "scaleStrategy", "suspend", "resources", "labels"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
AUTH_OPTIONS = {"mode", "enableK8sTokenAuth", "secretName"}

PRIMITIVES: dict[str, Any] = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}


def documents() -> dict[str, list[dict[str, Any]]]:
    found = {f.name: [d for d in yaml.safe_load_all(f.read_text()) if d] for f in sorted(KUBERAY.glob("*.yaml"))}
    assert found, "no manifests in docker/kuberay"
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for docs in documents().values() for d in docs if d["kind"] == kind]


def check_fields(data: Any, klass: str, path: str) -> None:
    """Every key of ``data`` is a field of the client model ``klass`` (recursively), each value of its type.
    Type names as the client spells them: ``List[X]``/``Dict[K, V]``/``Optional[X]`` (kubernetes >= 35)
    or ``list[X]``/``dict(K, V)`` (older)."""
    if m := re.fullmatch(r"Optional\[(.*)\]", klass):
        return check_fields(data, m.group(1), path)
    if m := re.fullmatch(r"[Ll]ist\[(.*)\]", klass):
        assert isinstance(data, list), f"{path}: expected a list, got {data!r}"
        for i, item in enumerate(data):
            check_fields(item, m.group(1), f"{path}[{i}]")
        return
    if m := re.fullmatch(r"Dict\[[^,]*, (.*)\]|dict\([^,]*, (.*)\)", klass):
        assert isinstance(data, dict), f"{path}: expected a mapping, got {data!r}"
        for key, value in data.items():
            check_fields(value, m.group(1) or m.group(2), f"{path}.{key}")
        return
    if klass == "object":
        return
    if klass in PRIMITIVES:
        ok = isinstance(data, PRIMITIVES[klass]) and not (klass in ("int", "float") and isinstance(data, bool))
        assert ok, f"{path}: expected {klass}, got {data!r} (quote quantities such as \"1\")"
        return
    model = getattr(client, klass)
    assert isinstance(data, dict), f"{path}: expected a {klass} mapping, got {data!r}"
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    assert not unknown, f"{path}: {unknown} is not a field of {klass}; its fields: {sorted(fields)}"
    for key, value in data.items():
        check_fields(value, model.openapi_types[fields[key]], f"{path}.{key}")


def pod_template(data: dict[str, Any], path: str) -> client.V1PodTemplateSpec:
    """The template checked key by key, then deserialized (required fields, enums) by the client."""
    check_fields(data, "V1PodTemplateSpec", path)
    api = client.ApiClient()
    if "content_type" in inspect.signature(api.deserialize).parameters:  # kubernetes >= 35
        template = api.deserialize(json.dumps(data), "V1PodTemplateSpec", "application/json")
    else:  # older clients read a response object's .data
        template = api.deserialize(types.SimpleNamespace(data=json.dumps(data)), "V1PodTemplateSpec")
    assert isinstance(template, client.V1PodTemplateSpec)
    return template


def templates() -> dict[str, dict[str, Any]]:
    """Every pod template in the manifests, by a readable path."""
    found: dict[str, dict[str, Any]] = {}
    for rc in of_kind("RayCluster"):
        name = rc["metadata"]["name"]
        found[f"RayCluster {name} head"] = rc["spec"]["headGroupSpec"]["template"]
        for group in rc["spec"].get("workerGroupSpecs", []):
            found[f"RayCluster {name} worker {group['groupName']}"] = group["template"]
    for job in of_kind("RayJob"):
        if "submitterPodTemplate" in job["spec"]:
            found[f"RayJob {job['metadata']['name']} submitter"] = job["spec"]["submitterPodTemplate"]
    return found


def test_the_manifests_are_a_raycluster_a_rayjob_and_their_volumes() -> None:
    kinds = sorted(d["kind"] for docs in documents().values() for d in docs)
    assert kinds == ["PersistentVolumeClaim", "PersistentVolumeClaim", "RayCluster", "RayJob"], kinds
    for docs in documents().values():
        for d in docs:
            expected = "v1" if d["kind"] == "PersistentVolumeClaim" else "ray.io/v1"
            assert d["apiVersion"] == expected, (d["kind"], d["apiVersion"])
    for pvc in of_kind("PersistentVolumeClaim"):
        check_fields(pvc["spec"], "V1PersistentVolumeClaimSpec", f"PVC {pvc['metadata']['name']}.spec")


def test_every_pod_template_deserializes_into_the_kubernetes_client() -> None:
    found = templates()
    assert len(found) >= 3, sorted(found)  # head, GPU workers, submitter
    for path, data in found.items():
        spec = pod_template(data, path).spec
        assert spec.containers, path


def test_a_misspelt_field_fails_the_check() -> None:
    """The check itself: the client's deserializer would drop these silently."""
    head = templates()[next(k for k in templates() if k.endswith(" head"))]
    for mutate, message in (
        (lambda t: t["spec"]["containers"][0].__setitem__("volumeMount", t["spec"]["containers"][0].pop("volumeMounts")),
         "'volumeMount'"),
        (lambda t: t["spec"].__setitem__("container", t["spec"].pop("containers")), "'container'"),
        (lambda t: t["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"].__setitem__("nmae", "x"), "'nmae'"),
        (lambda t: t["spec"]["containers"][0]["resources"]["limits"].__setitem__("cpu", 4), "quote quantities"),
    ):
        broken = copy.deepcopy(head)
        mutate(broken)
        with pytest.raises(AssertionError, match=message):
            pod_template(broken, "broken")
    nameless = copy.deepcopy(head)
    del nameless["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):  # a required field, from the client's own validation
        pod_template(nameless, "nameless")


def test_kuberay_fields() -> None:
    for rc in of_kind("RayCluster"):
        spec = rc["spec"]
        assert set(spec) <= RAYCLUSTER_SPEC, sorted(set(spec) - RAYCLUSTER_SPEC)
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP, sorted(set(spec["headGroupSpec"]) - HEAD_GROUP)
        assert set(spec.get("authOptions", {})) <= AUTH_OPTIONS
        groups = spec["workerGroupSpecs"]
        for g in groups:
            assert set(g) <= WORKER_GROUP, sorted(set(g) - WORKER_GROUP)
            assert {"groupName", "rayStartParams", "template"} <= set(g)
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for params in [spec["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
            # KubeRay's rayStartParams is map[string]string: a bare number is refused by the API server.
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), params
    for job in of_kind("RayJob"):
        assert set(job["spec"]) <= RAYJOB_SPEC, sorted(set(job["spec"]) - RAYJOB_SPEC)
        assert job["spec"].get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")


def containers(template: client.V1PodTemplateSpec) -> list[client.V1Container]:
    return list(template.spec.containers) + list(template.spec.init_containers or [])


def gpus(container: client.V1Container) -> int:
    limits = (container.resources.limits or {}) if container.resources else {}
    return int(limits.get("nvidia.com/gpu", 0))


def test_a_cpu_head_that_runs_the_driver_and_a_gpu_worker_group() -> None:
    (rc,) = of_kind("RayCluster")
    head = pod_template(rc["spec"]["headGroupSpec"]["template"], "head")
    assert rc["spec"]["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "trials belong on the workers"
    assert all(gpus(c) == 0 for c in containers(head))
    gpu_groups = [g for g in rc["spec"]["workerGroupSpecs"]
                  if any(gpus(c) >= 1 for c in containers(pod_template(g["template"], g["groupName"])))]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for g in gpu_groups:
        for c in containers(pod_template(g["template"], g["groupName"])):
            requests = c.resources.requests or {}
            assert str(requests.get("nvidia.com/gpu", gpus(c))) == str(gpus(c)), "GPU requests must equal limits"
    (job,) = of_kind("RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}


def test_one_image_the_one_docker_dockerfile_builds() -> None:
    images = {c.image for data in templates().values() for c in containers(pod_template(data, "t"))}
    assert len(images) == 1, images
    (image,) = images
    assert image.rsplit("/", 1)[-1] == "alore:latest", image  # README: docker build -f docker/Dockerfile -t alore:latest
    dockerfile = (DOCKER / "Dockerfile").read_text()
    # What KubeRay needs from the image: wget for its default probes, Ray's dashboard (job server) for RayJob.
    assert re.search(r"apt-get install[^\n]*\bwget\b", dockerfile), "KubeRay's probes run wget"
    assert '"ray[default]"' in dockerfile, "a RayJob is submitted through the dashboard's job server"


def test_shared_work_volume_and_read_only_datasets() -> None:
    claims = {p["metadata"]["name"]: p for p in of_kind("PersistentVolumeClaim")}
    for path, data in templates().items():
        if path.endswith("submitter"):
            continue  # it only runs `ray job submit`
        spec = pod_template(data, path).spec
        volumes = {v.name: v for v in spec.volumes or []}
        for c in containers(pod_template(data, path)):
            mounts = {m.mount_path: m for m in c.volume_mounts or []}
            assert {m.name for m in mounts.values()} <= set(volumes), f"{path}: a mount without a volume"
            work, data_mount = mounts.get(WORK_MOUNT), mounts.get(DATA_MOUNT)
            assert work and not work.read_only, f"{path}: the work folder at {WORK_MOUNT}, writable"
            assert data_mount and data_mount.read_only, f"{path}: the datasets at {DATA_MOUNT}, read-only"
            work_claim = volumes[work.name].persistent_volume_claim
            data_claim = volumes[data_mount.name].persistent_volume_claim
            assert work_claim and work_claim.claim_name in claims, path
            assert "ReadWriteMany" in claims[work_claim.claim_name]["spec"]["accessModes"]
            assert data_claim and data_claim.read_only and data_claim.claim_name in claims, path


def env_vars(template: client.V1PodTemplateSpec) -> list[client.V1EnvVar]:
    return [e for c in containers(template) for e in (c.env or [])]


def test_credentials_come_from_a_secret_on_the_head_only() -> None:
    found = {path: pod_template(data, path) for path, data in templates().items()}
    head = next(t for p, t in found.items() if p.endswith(" head"))
    from_secret = {e.name: e.value_from.secret_key_ref for e in env_vars(head)
                   if e.value_from and e.value_from.secret_key_ref}
    assert {"ALORE_DB", "MLFLOW_TRACKING_URI"} <= set(from_secret), sorted(from_secret)
    assert len({ref.name for ref in from_secret.values()}) == 1  # one Secret: alore-credentials
    for path, template in found.items():
        for e in env_vars(template):
            if e.name in SECRET_NAMES or SECRETISH.search(e.name):
                assert e.value is None and e.value_from and e.value_from.secret_key_ref, f"{path}: {e.name} in plain text"
                assert path.endswith(" head"), f"{path}: {e.name} reaches a pod that does not run the driver"
        for c in containers(template):
            assert not c.env_from, f"{path}: envFrom hands a whole Secret or ConfigMap to {c.name}"


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def test_no_credential_in_plain_text() -> None:
    example = (KUBERAY / "credentials.env.example").read_text()
    example_password = re.search(r"://[^:/@]+:([^@]+)@", example).group(1)
    for name, docs in documents().items():
        text = (KUBERAY / name).read_text()
        assert example_password not in text, name
        for d in docs:
            assert d["kind"] != "Secret", f"{name}: a Secret's data belongs in `kubectl create secret`, not in a file"
            for s in strings(d):
                assert not USERINFO.search(s), f"{name}: a URL with a password: {s[:60]}"
            runtime_env = yaml.safe_load(d.get("spec", {}).get("runtimeEnvYAML", "") or "{}") or {}
            leaked = [k for k in runtime_env.get("env_vars", {}) if k in SECRET_NAMES or SECRETISH.search(k)]
            assert not leaked, f"{name}: credentials in runtimeEnvYAML: {leaked}"
    (job,) = of_kind("RayJob")
    args = shlex.split(job["spec"]["entrypoint"])
    assert not {"--db", "--tracking-uri"} & set(args), "credentials come from the head's environment"


def test_the_entrypoint_is_a_valid_sweep_on_the_mounted_paths() -> None:
    import typer

    from alorectl.cli import app

    (job,) = of_kind("RayJob")
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["alorectl", "sweep"], args
    sweep = typer.main.get_command(app).commands["sweep"]
    ctx = sweep.commands["run"].make_context("run", args[2:])  # parses only: an unknown flag raises here
    assert Path(ctx.params["workdir"]).is_relative_to(WORK_MOUNT), "the work folder must be on the shared volume"
    assert Path(str(ctx.params["data_root"])).is_relative_to(DATA_MOUNT)
    for pair in (ctx.params["weights"] or "").split(","):
        assert Path(pair.split("=", 1)[-1]).is_relative_to(DATA_MOUNT), pair
