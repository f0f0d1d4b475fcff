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


def test_every_ray_cluster_runs_the_ray_the_package_is_tested_with():
    """A manifest left on an older Ray (deploy/pipeline's RayJob once said 2.40.0) would
    start a cluster whose Serve and Jobs APIs differ from the ones tested here."""
    import ray

    seen = {}
    for directory in kustomizations():
        for obj in render(directory):
            spec = obj.get("spec", {})
            cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
            if cluster:
                name = f"{directory.relative_to(DEPLOY)}/{obj['metadata']['name']}"
                seen[name] = cluster.get("rayVersion")
    assert seen, "no Ray cluster in deploy/"
    wrong = {k: v for k, v in seen.items() if v != ray.__version__}
    assert not wrong, f"rayVersion is not {ray.__version__} in {wrong}"


def test_the_training_rayjob_reads_and_writes_the_object_store():
    job = next(
        o
        for o in render(DEPLOY / "pipeline")
        if o["kind"] == "RayJob" and o["metadata"]["name"] == "embedrt-train"
    )
    argv = job["spec"]["entrypoint"].split()
    for flag in ("--base", "--data", "--out"):
        assert argv[argv.index(flag) + 1].startswith("s3://"), (flag, argv)


def test_the_pipeline_images_hold_what_its_config_and_manifests_name():
    """Every image deploy/pipeline runs is a target of its Dockerfile, and every file the
    config and the training RayJob name is copied into that image (or is its venv)."""
    import re
    import tomllib

    dockerfile = (DEPLOY / "pipeline/Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.MULTILINE))
    copied = [
        line.split()[-1]
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and line.split()[-1].startswith("/opt/embedrt")
    ]
    venv = re.search(r"python3 -m venv (\S+)", (DEPLOY / "Dockerfile").read_text())[1]

    def provided(path):
        return path.startswith(venv + "/") or any(
            path == c or path.startswith(c.rstrip("/") + "/") for c in copied
        )

    objects = render(DEPLOY / "pipeline")
    images = {c["image"] for o in objects for c in _containers(o)}
    assert images, "deploy/pipeline runs no image"
    for image in images:
        name = image.split(":")[0]
        assert name.startswith("embedrt/") and name.split("/")[1] in targets, (
            f"{image} is built by no target of deploy/pipeline/Dockerfile ({targets})"
        )
    config = tomllib.loads((DEPLOY / "pipeline/pipeline.toml").read_text())
    paths = [
        config["model"]["base"],
        config["train"]["python"],
        config["train"]["scripts"] + "/run.py",
        config["gates"]["frozen_benchmark"],
    ]
    job = next(o for o in objects if o["kind"] == "RayJob")
    paths += [a for a in job["spec"]["entrypoint"].split() if a.startswith("/")]
    missing = [p for p in paths if not provided(p)]
    assert not missing, f"not in the pipeline images: {missing}"


def _containers(obj):
    """Every container of a rendered object, at any depth (pod templates nest)."""
    out = []
    if isinstance(obj, dict):
        if "containers" in obj and isinstance(obj["containers"], list):
            out += obj["containers"]
        for v in obj.values():
            out += _containers(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _containers(v)
    return out


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
