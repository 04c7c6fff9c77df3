"""The Kubernetes manifests of deploy/, offline (no cluster here): every document validates
against the Kubernetes JSON schemas shipped in the `kubernetes-validate` package (strict: unknown
fields refused), for the oldest and newest Kubernetes versions it covers that we support; and the
wiring holds: selectors match pod labels, Services and probes name real container ports, probes
hit Triton's health endpoints, the server's port flags equal the container ports, HTTP is in no
Service and admitted by no NetworkPolicy rule, the metrics annotation names the metrics port, the
HPAs scale real Deployments on the metric the prometheus-adapter rule defines, the GPU init
container builds the engines, and every volume mount has its volume."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import needs_server

from mmtrt.serving.admin import ADMIN_APIS, HEADER, RESTRICT_FLAGS

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ("1.29.0", "1.37.0")
# the serving images: built by deploy/<flavour>/Dockerfile on a digest-pinned Triton 25.07+
SERVING_IMAGE = re.compile(r"^registry\.example\.com/mmtrt/tritonserver-(cpu|gpu):(\d\d\.\d\d)-py3$")
CHECK_TRITON_IMAGE = DEPLOY / "common" / "check-triton-image.sh"


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


DOCS = _documents()


def _kind(kind: str) -> list[dict]:
    return [d for _, d in DOCS if d["kind"] == kind]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_there_is_something_to_check():
    kinds = sorted({d["kind"] for _, d in DOCS})
    assert kinds == sorted(
        {
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
        }
    ), kinds
    assert {d["metadata"]["name"] for d in _kind("Deployment")} == {"mmtrt-triton-cpu", "mmtrt-triton-gpu"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    problems = []
    for path, doc in DOCS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            problems.append(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {e.message}")
    assert not problems, "\n".join(problems)


def test_the_validator_catches_a_broken_manifest():
    """The validator is not a no-op: wrong types and an unknown field are refused."""
    _, deployment = next((p, d) for p, d in DOCS if d["kind"] == "Deployment")
    import copy

    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGets"] = {}
    port = copy.deepcopy(_kind("Service")[0])
    port["spec"]["ports"][0]["port"] = "grpc"  # a Service port is a number
    for bad in (broken, unknown, port):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def _server_container(deployment: dict) -> dict:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tritonserver"]
    return c


def _flags(container: dict) -> dict[str, str]:
    assert container["command"] == ["tritonserver"]
    return dict((a[2:].split("=", 1) + ["true"])[:2] for a in container["args"])


@pytest.mark.parametrize("name", ["mmtrt-triton-cpu", "mmtrt-triton-gpu"])
def test_deployment_wiring(name):
    (dep,) = [d for d in _kind("Deployment") if d["metadata"]["name"] == name]
    flavour = name.rsplit("-", 1)[1]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _matches(dep["spec"]["selector"]["matchLabels"], labels)
    assert labels["app.kubernetes.io/component"] == flavour
    c = _server_container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"http", "grpc", "metrics"}
    flags = _flags(c)
    assert {k: int(flags[f"{k}-port"]) for k in ports} == ports, "tritonserver flags vs containerPorts"
    assert flags["model-control-mode"] == "none" and flags["strict-readiness"] == "true"
    # the admin APIs restricted on both protocols, as `mmtrt serve` does, under the Secret's key
    for flag in RESTRICT_FLAGS.values():
        apis, _, header = flags[flag[2:]].partition(":")
        assert sorted(apis.split(",")) == sorted(ADMIN_APIS), flag
        assert header == f"{HEADER}=$(MMTRT_ADMIN_KEY)", flag
    (key,) = [e for e in c["env"] if e["name"] == "MMTRT_ADMIN_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "mmtrt-admin-key", "key": "key"}
    # a model update is a rolling update gated by readiness: no pod stops before its successor
    # is ready, and the pod template names the version it serves (changing it rolls the pods)
    rolling = dep["spec"]["strategy"]
    assert rolling["type"] == "RollingUpdate" and rolling["rollingUpdate"]["maxUnavailable"] == 0
    assert int(pod["metadata"]["annotations"]["mmtrt.io/served-version"]) >= 1
    # probes: Triton's health endpoints, over the HTTP container port
    get = c["readinessProbe"]["httpGet"]
    assert get["path"] == "/v2/health/ready" and ports.get(get["port"], get["port"]) == ports["http"]
    if flavour == "cpu":  # python models: the probe that sees a dead stub (mmtrt/serving/liveness.py)
        command = c["livenessProbe"]["exec"]["command"]
        assert command[:2] == ["python3", "/opt/mmtrt/liveness.py"]
        options = dict(zip(command[2::2], command[3::2]))
        assert options == {
            "--repository": flags["model-repository"],
            "--pid": "1",
            "--http": f"127.0.0.1:{ports['http']}",
        }
        dockerfile = (DEPLOY / "cpu" / "Dockerfile").read_text()
        assert "COPY mmtrt/serving/liveness.py /opt/mmtrt/liveness.py" in dockerfile
    else:
        get = c["livenessProbe"]["httpGet"]
        assert get["path"] == "/v2/health/live" and ports.get(get["port"], get["port"]) == ports["http"]
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # metrics scraping
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == ports["metrics"] and ann["prometheus.io/path"] == "/metrics"
    # resources: requests within limits, a GPU for the GPU flavour
    res = c["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"] and key in res["limits"]
    assert _quantity(res["requests"]["cpu"]) <= _quantity(res["limits"]["cpu"])
    assert _quantity(res["requests"]["memory"]) <= _quantity(res["limits"]["memory"])
    # the model repository comes from a volume; every mount has its volume
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        for m in container.get("volumeMounts", []):
            assert m["name"] in volumes, (container["name"], m["name"])
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in {
        d["metadata"]["name"] for d in _kind("PersistentVolumeClaim")
    }
    repo = flags["model-repository"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert any(repo.startswith(p + "/") for p in mounts), (repo, list(mounts))
    image = SERVING_IMAGE.match(c["image"])
    assert image and image.group(1) == flavour, c["image"]
    dockerfile = (DEPLOY / flavour / "Dockerfile").read_text()
    assert "ARG TRITON_IMAGE\nFROM ${TRITON_IMAGE}\nARG TRITON_IMAGE\n" in dockerfile  # no default base
    assert 'RUN sh /opt/mmtrt/check-triton-image.sh "${TRITON_IMAGE}"' in dockerfile
    if flavour == "gpu":
        assert res["limits"]["nvidia.com/gpu"] == "1"
        (init,) = pod["spec"]["initContainers"]
        script = " ".join(init["command"] + init["args"])
        assert "mmtrt build-engines /work/export" in script
        assert f"mmtrt repo /work/export {repo} --flavour gpu" in script
        assert init["resources"]["limits"]["nvidia.com/gpu"] == "1"  # built on the serving GPU
        # the engines are built by the TensorRT of the serving image's release
        assert init["image"].endswith(f":{image.group(2)}-py3"), init["image"]
        build = (DEPLOY / "gpu" / "Dockerfile.build-engines").read_text()
        assert f"FROM nvcr.io/nvidia/tensorrt:{image.group(2)}-py3" in build
    else:
        assert "onnxruntime" in dockerfile and "numpy" in dockerfile  # model.py's imports
        assert "Pillow" in dockerfile and "pydicom" in dockerfile  # file_decoder's (mmtrt's decoder)
        assert repo == "/models/repo-cpu"


def _quantity(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    m = re.fullmatch(r"([\d.]+)(Ki|Mi|Gi|m|)", str(q))
    assert m, q
    return float(m.group(1)) * units[m.group(2)]


def _pods() -> list[tuple[dict, dict]]:
    """(pod labels, container ports by name) of each Deployment."""
    out = []
    for dep in _kind("Deployment"):
        c = _server_container(dep)
        out.append(
            (
                dep["spec"]["template"]["metadata"]["labels"],
                {p["name"]: p["containerPort"] for p in c["ports"]},
            )
        )
    return out


def test_services_expose_grpc_only_and_select_pods():
    for svc in _kind("Service"):
        assert svc["spec"]["type"] == "ClusterIP"
        targets = [(labels, ports) for labels, ports in _pods() if _matches(svc["spec"]["selector"], labels)]
        assert len(targets) == 1, svc["metadata"]["name"]
        labels, ports = targets[0]
        for p in svc["spec"]["ports"]:
            target = ports.get(p["targetPort"], p["targetPort"])
            assert target in ports.values(), p
            assert target != ports["http"] and p["port"] != ports["http"], "HTTP in a Service"
        assert [p["name"] for p in svc["spec"]["ports"]] == ["grpc"]


def test_networkpolicy_admits_grpc_and_metrics_not_http():
    (policy,) = _kind("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    covered = [
        ports for labels, ports in _pods() if _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    ]
    assert len(covered) == 2  # both flavours
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    for ports in covered:
        assert ports["http"] not in admitted and "http" not in admitted
        assert admitted == {ports["grpc"], ports["metrics"]}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without 'from' admits everyone"
    (metrics_rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8002]
    monitoring = metrics_rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    (adapter,) = [c for c in _kind("ConfigMap") if c["metadata"]["name"] == "prometheus-adapter-mmtrt"]
    assert adapter["metadata"]["namespace"] == monitoring


def test_pdb_and_hpa_target_the_deployments():
    deployments = {d["metadata"]["name"]: d for d in _kind("Deployment")}
    pdbs = _kind("PodDisruptionBudget")
    assert len(pdbs) == 2
    for pdb in pdbs:
        matched = [
            n
            for n, d in deployments.items()
            if _matches(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, pdb["metadata"]["name"]
        assert pdb["spec"]["minAvailable"] < deployments[matched[0]]["spec"]["replicas"]

    (adapter,) = [c for c in _kind("ConfigMap") if c["metadata"]["name"] == "prometheus-adapter-mmtrt"]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    (rule,) = rules
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    metric = rule["name"]["as"]
    hpas = _kind("HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(deployments)
    for h in hpas:
        ref = h["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["apiVersion"] == "apps/v1"
        (m,) = h["spec"]["metrics"]
        assert m["type"] == "Pods" and m["pods"]["metric"]["name"] == metric
        assert h["spec"]["minReplicas"] >= 2  # with the PDB's minAvailable 1: a node drain keeps one


@needs_server
def test_triton_metric_names_exist_in_the_real_server(server):
    """The adapter rule's metric names are among those a real Triton 2.51 exports for the model
    (its /metrics page, CPU flavour, after one request)."""
    import urllib.request

    import numpy as np

    from mmtrt.serving.client import TritonClient, image_inputs

    with TritonClient(server.grpc_url, "grpc") as client:
        client.infer("classifier", image_inputs(np.zeros((1, 1, 256, 256))))
    page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    (adapter,) = [c for c in _kind("ConfigMap") if c["metadata"]["name"] == "prometheus-adapter-mmtrt"]
    rule = yaml.safe_load(adapter["data"]["config.yaml"])["rules"][0]
    names = set(re.findall(r"\b(nv_[a-z_]+)\{", rule["seriesQuery"] + rule["metricsQuery"]))
    assert names == {"nv_inference_queue_duration_us", "nv_inference_request_success"}, names
    for name in names:
        assert re.search(rf'^{name}{{model="classifier",version="1"}} \d', page, re.M), name


@pytest.mark.parametrize(
    "image, why",
    [
        (f"nvcr.io/nvidia/tritonserver:25.07-py3@sha256:{'a' * 64}", None),
        (f"nvcr.io/nvidia/tritonserver:25.10-py3@sha256:{'0123456789abcdef' * 4}", None),
        (f"nvcr.io/nvidia/tritonserver:26.01-py3@sha256:{'b' * 64}", None),
        ("", "not NVIDIA's tritonserver pinned by digest"),
        ("nvcr.io/nvidia/tritonserver:25.10-py3", "not NVIDIA's tritonserver pinned by digest"),
        (f"nvcr.io/nvidia/tritonserver:25.10-py3@sha256:{'a' * 63}", "pinned by digest"),
        (f"docker.io/someone/tritonserver:25.10-py3@sha256:{'a' * 64}", "not NVIDIA's tritonserver"),
        (f"nvcr.io/nvidia/tritonserver:24.10-py3@sha256:{'a' * 64}", "a release before 25.07"),
        (f"nvcr.io/nvidia/tritonserver:25.06-py3@sha256:{'a' * 64}", "a release before 25.07"),
        (f"nvcr.io/nvidia/tritonserver:25.10-py3-sdk@sha256:{'a' * 64}", "not a -py3 image"),
    ],
)
def test_the_serving_images_refuse_an_affected_or_unpinned_triton(image, why):
    """The check both Dockerfiles run on their base (`--build-arg TRITON_IMAGE=...`): NVIDIA's
    tritonserver 25.07 or newer (earlier ones have CVE-2025-23310/23311/23319/23320/23334),
    pinned by a sha256 digest; anything else stops the build with the reason."""
    import subprocess

    r = subprocess.run(["sh", str(CHECK_TRITON_IMAGE), image], capture_output=True, text=True)
    if why is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and why in r.stderr, (r.returncode, r.stderr)
        assert "--build-arg TRITON_IMAGE=" in r.stderr
