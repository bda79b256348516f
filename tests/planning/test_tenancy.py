"""Tenancy in the plan: keys and store locations per namespace, read-only serving, pinned engine sets."""
import json
import re

import pytest

from trtop import names
from trtop.api.fetch import FetchPolicy
from trtop.config import Settings, parse_sharing
from trtop.planning.common import store_folders
from trtop.planning.facts import ClusterFacts, JobFact
from trtop.planning.plan import plan_model_deployment

from .conftest import cpu_node, md_body, record_for

NOW = "2026-11-24T00:00:00Z"
SPEC = {"model": {"uri": "pvc://models/resnet", "format": "savedmodel"}, "engine": {"targets": ["cpu"]}}
NODES = (cpu_node("cpu-0"),)


def in_namespace(namespace: str) -> dict:
    body = md_body(SPEC)
    body["metadata"]["namespace"] = namespace
    return body


def plan(body, settings, records=None):
    return plan_model_deployment(body, ClusterFacts(nodes=NODES, records=records or {}), settings, now=NOW)


def pod_of(manifest):
    return manifest["spec"]["template"]["spec"]


def container_env(manifest):
    return {e["name"]: e.get("value") for e in pod_of(manifest)["containers"][0]["env"]}


def served(body, settings):
    first = plan(body, settings)
    return plan(body, settings, {e.key: record_for(e) for e in first.engines})


def test_two_namespaces_with_the_same_model_get_different_keys():
    settings = Settings(store_pvc="engines")
    a, b = plan(in_namespace("team-a"), settings), plan(in_namespace("team-b"), settings)
    assert a.engines[0].key != b.engines[0].key
    assert a.engines[0].request.scope == "team-a" and b.engines[0].request.scope == "team-b"


def test_a_record_under_another_namespaces_key_is_not_found():
    """team-b's engine (same model URI) is in the facts: team-a still builds its own."""
    settings = Settings(store_pvc="engines")
    theirs = served(in_namespace("team-b"), settings).engines[0]
    mine = plan(in_namespace("team-a"), settings, {theirs.key: record_for(theirs)})
    assert mine.engines[0].state == "Building" and len(mine.jobs_to_create) == 1  # its Job is being created


def test_sharing_namespaces_share_keys_and_scope():
    settings = Settings(store_pvc="engines", store_sharing={"ml": ("team-a", "team-b")})
    a, b = plan(in_namespace("team-a"), settings), plan(in_namespace("team-b"), settings)
    c = plan(in_namespace("team-c"), settings)
    assert a.engines[0].key == b.engines[0].key != c.engines[0].key
    assert a.engines[0].request.scope == "shared.ml" and c.engines[0].request.scope == "team-c"


def test_sharing_setting_is_parsed_and_checked():
    assert parse_sharing("ml=team-a, team-b; cv=team-c") == {"ml": ("team-a", "team-b"), "cv": ("team-c",)}
    with pytest.raises(ValueError, match="in two groups"):
        Settings(store_sharing={"ml": ("team-a",), "cv": ("team-a",)})
    with pytest.raises(ValueError, match="DNS label"):
        Settings(store_sharing={"Bad.Group": ("team-a",)})
    assert Settings.from_env({"TRTOP_STORE_SHARING": "ml=a,b"}).store_scope("b") == "shared.ml"


def test_builds_mount_only_their_key_and_the_timing_caches_and_serving_the_scope_read_only():
    settings = Settings(store_pvc="engines")
    job = plan(in_namespace("team-a"), settings).jobs_to_create[0]
    key = job["metadata"]["labels"][names.LABEL_ENGINE_KEY]
    deployment = served(in_namespace("team-a"), settings).units[0]
    root = settings.store_mount_path
    for manifest, read_only, expected in (
            (job, False, {(root, "team-a", True), (f"{root}/{key}", f"team-a/{key}", False),
                          (f"{root}/_timing-caches", "team-a/_timing-caches", False)}),
            (deployment, True, {(root, "team-a", True)})):
        pod = pod_of(manifest)
        (volume,) = [v for v in pod["volumes"] if v["name"] == "engine-store"]
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "engine-store"]
        assert volume["persistentVolumeClaim"] == {"claimName": "engines", "readOnly": read_only}
        assert {(m["mountPath"], m["subPath"], m["readOnly"]) for m in mounts} == expected
        assert container_env(manifest)[names.ENV_STORE_URI] == root
    # What the operator makes before it creates the Job: exactly the writable sub-paths.
    assert store_folders(job) == (f"team-a/{key}", "team-a/_timing-caches")
    assert store_folders(plan(in_namespace("team-a"), Settings(store_uri="s3://b/p")).jobs_to_create[0]) == ()


def test_s3_workloads_get_their_scope_and_serving_pods_the_read_only_secret():
    settings = Settings(store_uri="s3://bucket/engines", store_secret="store-rw", store_read_secret="store-ro")
    job = plan(in_namespace("team-a"), settings).jobs_to_create[0]
    deployment = served(in_namespace("team-a"), settings).units[0]
    request = json.loads(container_env(job)[names.ENV_ENGINE_REQUEST])
    assert request["store_uri"] == container_env(job)[names.ENV_STORE_URI] == "s3://bucket/engines/team-a"
    assert container_env(deployment)[names.ENV_STORE_URI] == "s3://bucket/engines/team-a"
    assert pod_of(job)["containers"][0]["envFrom"] == [{"secretRef": {"name": "store-rw"}}]
    assert pod_of(deployment)["containers"][0]["envFrom"] == [{"secretRef": {"name": "store-ro"}}]


def test_the_engine_set_pins_each_artifacts_sha256():
    deployment = served(in_namespace("team-a"), Settings(store_pvc="engines")).units[0]
    (entry,) = json.loads(container_env(deployment)[names.ENV_ENGINE_SET])
    assert set(entry) == {"key", "target", "backend", "artifact", "sha256", "size"}
    assert entry["sha256"] == entry["key"][2:] * 4 and entry["size"] == 1234


def test_build_jobs_carry_the_operators_fetch_policy():
    settings = Settings.from_env({"TRTOP_FETCH_HOSTS": "models.example.com", "TRTOP_FETCH_MAX_BYTES": "1000",
                                  "TRTOP_FETCH_PRIVATE_NETWORKS": "10.1.0.0/16"})
    job = plan(in_namespace("team-a"), settings).jobs_to_create[0]
    policy = FetchPolicy.from_json(container_env(job)[names.ENV_FETCH_POLICY])
    assert policy.hosts == ("models.example.com",) and policy.max_bytes == 1000
    assert policy.private_networks == ("10.1.0.0/16",) and "http" not in policy.schemes


def test_job_failure_messages_are_redacted_in_status():
    settings = Settings()
    first = plan(in_namespace("team-a"), settings)
    engine = first.engines[0]
    failed = {engine.key: JobFact(engine.job_name, engine.key, "failed",
                                  "https://u:p4ss@host/m.onnx?X-Amz-Signature=abc123: HTTP 403")}
    p = plan_model_deployment(in_namespace("team-a"), ClusterFacts(nodes=NODES, jobs=failed), settings, now=NOW)
    text = json.dumps(p.status)
    assert "p4ss" not in text and "abc123" not in text and "HTTP 403" in text


def test_build_and_serving_pods_get_no_api_token_and_bounded_tmp():
    settings = Settings(store_pvc="engines", build_tmp_size="20Gi", serving_tmp_size="5Gi")
    job = plan(in_namespace("team-a"), settings).jobs_to_create[0]
    deployment = served(in_namespace("team-a"), settings).units[0]
    for manifest, size in ((job, "20Gi"), (deployment, "5Gi")):
        pod = pod_of(manifest)
        assert pod["automountServiceAccountToken"] is False
        (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp["emptyDir"] == {"sizeLimit": size}


def with_images(builder=None, server=None) -> dict:
    body = in_namespace("team-a")
    body["spec"] = {**SPEC, "engine": {**SPEC["engine"], **({"builderImage": builder} if builder else {})},
                    **({"serving": {"image": server}} if server else {})}
    return body


def with_sidecar(image: str) -> dict:
    body = in_namespace("team-a")
    body["spec"] = {**SPEC, "serving": {"sidecars": [{"name": "pre", "image": image}]}}
    return body


@pytest.mark.parametrize("body,field", [
    (with_images("evil.example.com/miner:latest", None), "engine.builderImage"),
    (with_images(None, "docker.io/library/python:3"), "serving.image"),
    (with_sidecar("docker.io/library/python:3"), "serving.sidecars[0].image"),
])
def test_images_outside_the_allowed_list_are_a_spec_error(body, field):
    refused = plan(body, Settings())  # the planner returns the InvalidSpec status
    assert refused.spec is None
    assert re.search(rf"spec.{re.escape(field)}: .* is not in the platform's allowed images",
                     refused.status["message"])


def test_a_sidecar_runs_restricted_beside_the_server_without_its_volumes_or_credentials():
    settings = Settings.from_env({"TRTOP_ALLOWED_IMAGES": "registry.example.com/ml/*", "TRTOP_STORE_PVC": "engines"})
    body = with_sidecar("registry.example.com/ml/pre:1")
    body["spec"]["serving"]["sidecars"][0]["env"] = [{"name": "MODE", "value": "fast"}]
    pod = pod_of(served(body, settings).units[0])
    server, pre = pod["containers"]
    assert pre["name"] == "pre" and pre["image"] == "registry.example.com/ml/pre:1"
    assert pre["securityContext"] == server["securityContext"] and pre["securityContext"]["readOnlyRootFilesystem"]
    assert pre["env"] == [{"name": "MODE", "value": "fast"}] and "envFrom" not in pre
    assert [m["name"] for m in pre["volumeMounts"]] == ["sidecar-tmp"]  # not the store's, not the server's /tmp
    assert {v["name"] for v in pod["volumes"]} >= {"sidecar-tmp", "tmp"}
    assert any(m["name"] != "tmp" for m in server["volumeMounts"])  # the server does mount the store


def test_allowed_images_by_exact_name_and_prefix():
    settings = Settings.from_env({"TRTOP_ALLOWED_IMAGES": "registry.example.com/ml/*, docker.io/me/server:1"})
    job = plan(with_images(builder="registry.example.com/ml/converter:2"), settings).jobs_to_create[0]
    assert pod_of(job)["containers"][0]["image"] == "registry.example.com/ml/converter:2"
    assert plan(with_images(server="docker.io/me/server:1"), settings).jobs_to_create
    own = plan(with_images(builder=settings.converter_image), Settings()).jobs_to_create[0]
    assert pod_of(own)["containers"][0]["image"] == settings.converter_image
    assert plan(with_images(builder="registry.example.com/other/x:1"), settings).spec is None


TAINTS = [{"key": "nvidia.com/gpu.product", "operator": "Equal", "value": "H100", "effect": "NoSchedule"},
          {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}]


def test_build_jobs_get_only_the_gpu_tolerations_of_serving_by_default():
    body = in_namespace("team-a")
    body["spec"] = {**SPEC, "serving": {"tolerations": TAINTS}}
    job = plan(body, Settings()).jobs_to_create[0]
    keys = [t["key"] for t in pod_of(job)["tolerations"]]
    assert keys == [names.GPU_RESOURCE, "nvidia.com/gpu.product"]


def test_engine_tolerations_replace_the_default():
    body = in_namespace("team-a")
    build_taint = {"key": "builds", "operator": "Exists", "effect": "NoSchedule"}
    body["spec"] = {**SPEC, "engine": {**SPEC["engine"], "tolerations": [build_taint]},
                    "serving": {"tolerations": TAINTS}}
    job = plan(body, Settings()).jobs_to_create[0]
    assert [t["key"] for t in pod_of(job)["tolerations"]] == [names.GPU_RESOURCE, "builds"]
    deployment = served(body, Settings()).units[0]
    assert [t["key"] for t in pod_of(deployment)["tolerations"]] == ["nvidia.com/gpu.product", "dedicated"]


@pytest.mark.parametrize("name", ["TRTOP_ENGINE_SET", "TRTOP_BACKEND", "AWS_SECRET_ACCESS_KEY"])
def test_serving_env_cannot_set_what_trtop_sets(name):
    body = in_namespace("team-a")
    body["spec"] = {**SPEC, "serving": {"env": [{"name": "LOG_FORMAT", "value": "json"}, {"name": name, "value": "x"}]}}
    refused = plan(body, Settings())
    message = refused.status["message"]  # api/validation (TRTOP_*) or planning/admission (the rest) says it
    assert refused.spec is None and "spec.serving.env[1]" in message and name in message, message
    assert "set by trtop" in message, message


@pytest.mark.parametrize("section", ["engine", "serving"])
def test_pod_annotations_may_not_loosen_confinement(section):
    body = in_namespace("team-a")
    body["spec"] = {**SPEC, section: {**SPEC.get(section, {}), "podAnnotations": {
        "example.com/team": "vision", "container.apparmor.security.beta.kubernetes.io/server": "unconfined"}}}
    refused = plan(body, Settings())
    message = refused.status["message"]
    assert refused.spec is None and f"spec.{section}.podAnnotations" in message and "AppArmor" in message, message
    body["spec"][section]["podAnnotations"].pop("container.apparmor.security.beta.kubernetes.io/server")
    assert plan(body, Settings()).spec is not None  # other annotations stay the tenant's


def test_builds_may_read_local_files_only_in_the_models_claim():
    job = plan(in_namespace("team-a"), Settings()).jobs_to_create[0]
    assert FetchPolicy.from_json(container_env(job)[names.ENV_FETCH_POLICY]).file_roots == ("/mnt/models/models",)
    body = in_namespace("team-a")
    body["spec"] = {**SPEC, "model": {"uri": "s3://models/resnet", "format": "savedmodel"}}
    job = plan(body, Settings()).jobs_to_create[0]
    assert FetchPolicy.from_json(container_env(job)[names.ENV_FETCH_POLICY]).file_roots == ()
