"""Every kustomization under deploy/ renders, and every object it renders is valid offline:
built-in kinds against Kubernetes' own schemas (kubernetes-validate), RayService and RayJob
against the KubeRay v1.7.0 CRDs' openAPIV3Schema (jsonschema). Broken manifests must fail."""

import copy
import os
import pathlib
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
CRDS = pathlib.Path(
    os.environ.get("EMBEDRT_KUBERAY_CRDS", ROOT.parent / "shared/data/kuberay-crds")
)
K8S_VERSION = "1.32.0"


def kustomizations():
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def render(directory: pathlib.Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not installed; the manifest tests need `kubectl kustomize`"
        )
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def crd_schemas() -> dict:
    schemas = {}
    for path in CRDS.glob("ray.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (
                f"{crd['spec']['group']}/{version['name']}",
                crd["spec"]["names"]["kind"],
            )
            schemas[key] = version["schema"]["openAPIV3Schema"]
    if not schemas:
        pytest.fail(f"no KubeRay CRDs in {CRDS}")
    return schemas


SCHEMAS = None


def validate(obj: dict) -> None:
    """Raises on an invalid object; KubeRay kinds by CRD, the rest by Kubernetes' schemas."""
    global SCHEMAS
    SCHEMAS = SCHEMAS or crd_schemas()
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key[0] and key[0].startswith("ray.io/"):
        if key not in SCHEMAS:
            raise jsonschema.ValidationError(f"no KubeRay CRD schema for {key}")
        jsonschema.validate(obj, SCHEMAS[key], cls=jsonschema.Draft7Validator)
        # The serve config inside is YAML in a string: it must parse and name the app.
        if obj["kind"] == "RayService":
            serve = yaml.safe_load(obj["spec"]["serveConfigV2"])
            assert (
                serve["applications"][0]["import_path"] == "embedrt.ray_serve:build_app"
            )
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "directory", kustomizations(), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_rendered_object_is_valid(directory):
    objects = render(directory)
    assert objects, f"{directory} renders nothing"
    for obj in objects:
        validate(obj)


def test_overlays_exist_and_eks_asks_for_gpus():
    dirs = {str(p.relative_to(DEPLOY)) for p in kustomizations()}
    assert {"base", "overlays/eks", "overlays/local"} <= dirs
    svc = next(o for o in render(DEPLOY / "overlays/eks") if o["kind"] == "RayService")
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in worker["tolerations"])
    types = worker["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    values = types["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    assert any(v.startswith("g5.") for v in values) and any(
        v.startswith("g4dn.") for v in values
    )
    assert svc["spec"]["upgradeStrategy"]["type"] == "NewCluster"


def _base(kind):
    return copy.deepcopy(next(o for o in render(DEPLOY / "base") if o["kind"] == kind))


def test_a_rayservice_with_a_wrong_field_type_fails():
    svc = _base("RayService")
    svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate(svc)


def test_a_rayjob_without_its_head_fails():
    job = _base("RayJob")
    del job["spec"]["rayClusterSpec"]["headGroupSpec"]
    with pytest.raises(jsonschema.ValidationError):
        validate(job)


def test_a_deployment_without_containers_fails():
    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {}},
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_a_service_account_with_an_unknown_field_fails():
    sa = _base("ServiceAccount")
    sa["spec"] = {"replicas": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sa)
