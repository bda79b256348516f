"""What `helm template` renders: a locked-down operator wired to the settings it reads.

The operator's contract with the chart is its CLI (trtop.handlers.cli) and its TRTOP_*
variables (trtop.config.Settings.from_env): the rendered Deployment is fed back through
both, so a renamed flag or variable fails here instead of in a cluster.
"""
from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from tests.charts.chart import CHART, NAMESPACE, NAMESPACED_VALUES, RELEASE, ROOT, by_kind, container_env, one, run_helm
from trtop import names, versions
from trtop.api.fetch import FetchPolicy, env_fields
from trtop.config import Settings
from trtop.handlers.cli import build_parser

NAMESPACED = ("-f", str(NAMESPACED_VALUES))
MODES = {"cluster-wide": (), "namespaced": NAMESPACED}


def operator_container(objects):
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def operator_settings(objects) -> Settings:
    return Settings.from_env(container_env(one(objects, "Deployment")))


@pytest.mark.parametrize("mode", MODES)
def test_every_object_carries_the_app_kubernetes_io_labels(render, mode):
    objects = render(*MODES[mode])
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels[names.LABEL_NAME] == names.APP_NAME, obj["metadata"]["name"]
        assert labels[names.LABEL_INSTANCE] == RELEASE
        assert labels[names.LABEL_COMPONENT] == names.COMPONENT_OPERATOR
        assert labels[names.LABEL_PART_OF] == names.APP_NAME
        assert labels[names.LABEL_MANAGED_BY] == "Helm"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[names.LABEL_COMPONENT] == names.COMPONENT_OPERATOR


def test_selector_labels_stay_fixed_across_versions(render):
    # Deployment selectors are immutable: a version in them would break every `helm upgrade`.
    selector = one(render(), "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector == {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: RELEASE,
                        names.LABEL_COMPONENT: names.COMPONENT_OPERATOR}


def test_operator_pod_runs_locked_down(render):
    deployment = one(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # A read-only root needs a writable /tmp for Python and kopf.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_probes_ask_kopfs_health_endpoint_the_operator_serves(render):
    container = operator_container(render("--set", "healthPort=9001"))
    args = build_parser().parse_args(container["args"])
    liveness = urlparse(args.liveness)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == liveness.path == "/healthz"
        assert ports[get["port"]] == liveness.port == 9001


def test_metrics_port_is_the_one_the_operator_listens_on(render):
    objects = render("--set", "metricsPort=9100")
    ports = {p["name"]: p["containerPort"] for p in operator_container(objects)["ports"]}
    assert operator_settings(objects).metrics_port == ports["metrics"] == 9100
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]


def _variables_read_by_the_operator() -> set[str]:
    sources = [ROOT / "operator" / "trtop" / "config.py", ROOT / "operator" / "trtop" / "handlers" / "main.py"]
    found = set()
    for path in sources:
        found |= set(re.findall(r'"(TRTOP_[A-Z_]+[A-Z])"', path.read_text()))
    # The fetch policy is read field by field (FetchPolicy.from_env: TRTOP_FETCH_<FIELD>).
    found |= {f"TRTOP_FETCH_{f.name.upper()}" for f in env_fields()}
    return {v for v in found if not v.endswith("_ENV")} - {"TRTOP_WORKLOAD_ENV"}


def test_chart_sets_exactly_the_variables_the_operator_reads(render):
    read = _variables_read_by_the_operator()
    assert "TRTOP_NAMESPACES" in read and "TRTOP_RECONCILE_INTERVAL_SECONDS" in read  # the parse works
    set_by_chart = {k for k in container_env(one(render(), "Deployment")) if k.startswith("TRTOP_")}
    assert set_by_chart == read


def test_default_install_is_cluster_wide_with_the_default_images_and_a_pvc_store(render):
    objects = render()
    settings = operator_settings(objects)
    assert settings.namespaces == ()
    assert (settings.converter_image, settings.converter_cpu_image, settings.server_image,
            settings.server_cpu_image) == (versions.CONVERTER_IMAGE, versions.CONVERTER_CPU_IMAGE,
                                           versions.SERVER_IMAGE, versions.SERVER_CPU_IMAGE)
    assert settings.tensorrt_version == versions.TENSORRT_VERSION
    assert operator_container(objects)["image"] == versions.OPERATOR_IMAGE
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert settings.store_pvc == claim["metadata"]["name"] == f"{RELEASE}-engines"
    assert settings.store_uri == settings.store_mount_path == "/var/lib/trtop/engines"
    # The operator reads engine.json through the same claim; it writes to make the builds' folders and for gc.
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "engine-store")
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "engine-store")
    assert mount["mountPath"] == settings.store_mount_path and mount.get("readOnly", False) is False
    assert (settings.gc_interval_seconds, settings.gc_grace_seconds) == (3600, 86400)
    off = render("--set", "gc.enabled=false")
    assert operator_settings(off).gc_interval_seconds == 0
    pod = one(off, "Deployment")["spec"]["template"]["spec"]
    # Still writable without gc: the operator makes each build Job's folders (planning.common.store_folders).
    assert next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "engine-store").get("readOnly") is None


def test_existing_claim_is_mounted_and_no_claim_is_made(render):
    objects = render("--set", "store.pvc.create=false", "--set", "store.pvc.existingClaim=shared-engines",
                     "--set", "store.mountPath=/engines")
    assert by_kind(objects, "PersistentVolumeClaim") == []
    settings = operator_settings(objects)
    assert (settings.store_pvc, settings.store_uri, settings.store_mount_path) == ("shared-engines", "/engines", "/engines")


def test_s3_store_passes_the_bucket_and_its_secret(render):
    objects = render("--set", "store.pvc.create=false", "--set", "store.s3.uri=s3://engines/prod",
                     "--set", "store.s3.existingSecret=s3-creds")
    settings = operator_settings(objects)
    assert (settings.store_uri, settings.store_secret, settings.store_pvc) == ("s3://engines/prod", "s3-creds", "")
    assert by_kind(objects, "PersistentVolumeClaim") == []
    container = operator_container(objects)
    # The operator itself reads engine.json from the bucket: it gets the credentials too.
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert all(m["name"] != "engine-store" for m in container["volumeMounts"])


def test_claim_kept_on_uninstall_only_when_asked(render):
    assert "annotations" not in one(render(), "PersistentVolumeClaim")["metadata"]
    kept = one(render("--set", "store.pvc.keepOnUninstall=true"), "PersistentVolumeClaim")
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_workload_settings_reach_the_operator(render):
    settings = operator_settings(render(
        "--set", "workloads.converterImage=my.reg/conv:1", "--set", "workloads.tensorrtVersion=10.14.1",
        "--set", "workloads.serviceAccountName=engines", "--set", "workloads.env.HTTPS_PROXY=http://proxy:3128",
        "--set", "operator.reconcileIntervalSeconds=30", "--set", "operator.prometheusUrl=http://prom:9090"))
    assert settings.converter_image == "my.reg/conv:1"
    assert settings.tensorrt_version == "10.14.1"
    assert settings.workload_service_account == "engines"
    assert dict(settings.workload_env) == {"HTTPS_PROXY": "http://proxy:3128"}
    assert settings.prometheus_url == "http://prom:9090"


def test_the_wake_query_reaches_the_operator_as_written(render):
    query = 'sum(gateway_requests_waiting{namespace="$namespace",model="$name"})'
    settings = operator_settings(render("--set", "operator.prometheusUrl=http://prom:9090",
                                        "--set-string", "operator.wakeQuery=" + query.replace(",", "\\,")))
    assert settings.wake_query == query
    assert operator_settings(render()).wake_query == ""


def test_trust_settings_reach_the_operator(render):
    settings = operator_settings(render(
        "--set", "store.pvc.create=false", "--set", "store.s3.uri=s3://engines/prod",
        "--set", "store.s3.existingSecret=rw", "--set", "store.s3.readOnlySecret=ro",
        "--set", "store.sharing.ml={team-a,team-b}", "--set", "store.sharing.cv={team-c}",
        "--set", "workloads.allowedImages={registry.example.com/ml/*}", "--set", "workloads.buildTmpSize=20Gi",
        "--set", "fetch.hosts={*.example.com}", "--set", "fetch.privateNetworks={10.0.0.0/8}",
        "--set", "fetch.maxBytes=1000", "--set", "fetch.deadlineSeconds=60"))
    assert (settings.store_secret, settings.store_read_secret) == ("rw", "ro")
    assert settings.store_scope("team-b") == "shared.ml" and settings.store_scope("team-c") == "shared.cv"
    assert settings.store_scope("team-d") == "team-d"
    assert settings.allowed_images == ("registry.example.com/ml/*",) and settings.build_tmp_size == "20Gi"
    policy = settings.fetch_policy
    assert policy.hosts == ("*.example.com",) and policy.private_networks == ("10.0.0.0/8",)
    assert (policy.max_bytes, policy.deadline_seconds) == (1000, 60.0)
    assert policy.schemes == ("https", "s3", "gs", "file")


def test_default_trust_settings_are_the_strict_ones(render):
    settings = operator_settings(render())
    assert settings.store_sharing == {} and settings.allowed_images == ()
    assert settings.fetch_policy == FetchPolicy()


@pytest.mark.parametrize("replicas", [1, 3])
def test_replicas_peer_through_kopf_with_their_own_priorities(render, replicas):
    objects = render("--set", f"replicaCount={replicas}")
    assert one(objects, "Deployment")["spec"]["replicas"] == replicas
    container = operator_container(objects)
    args = build_parser().parse_args(container["args"])
    assert not args.standalone and args.peering == RELEASE
    # "random" draws per process: two replicas never share a priority (kopf would pause both).
    draws = {build_parser().parse_args(container["args"]).priority for _ in range(20)}
    assert len(draws) > 1
    # kopf names each peer by POD_ID: the pod name says which replica works.
    env = next(e for e in container["env"] if e["name"] == "POD_ID")
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    peering = one(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == args.peering


def test_standalone_when_peering_is_off(render):
    objects = render("--set", "peering.enabled=false")
    args = build_parser().parse_args(operator_container(objects)["args"])
    assert args.standalone
    assert by_kind(objects, "ClusterKopfPeering") == by_kind(objects, "KopfPeering") == []


def test_namespaced_install_serves_its_namespaces_with_a_peering_object_in_each(render):
    objects = render(*NAMESPACED)
    assert operator_settings(objects).namespaces == ("team-a", "team-b")
    args = build_parser().parse_args(operator_container(objects)["args"])
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {args.peering}
    assert by_kind(objects, "ClusterKopfPeering") == []


def test_operator_image_by_digest_and_pull_secrets(render):
    digest = "sha256:" + "a" * 64
    objects = render("--set", f"image.digest={digest}", "--set", "imagePullSecrets={regcred}")
    assert operator_container(objects)["image"] == f"ghcr.io/trtop/operator@{digest}"
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_service_account_apart_from_rbac(render):
    objects = render("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert by_kind(objects, "ServiceAccount") == []
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objects, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "ops", "namespace": NAMESPACE}]
    no_rbac = render("--set", "rbac.create=false")
    assert not [o for o in no_rbac if o["apiVersion"].startswith("rbac.authorization.k8s.io")]
    assert one(no_rbac, "ServiceAccount")["metadata"]["name"] == RELEASE


def test_service_monitor_scrapes_the_metrics_service(render):
    objects = render("--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom")
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_pod_monitor_scrapes_the_operator_pods(render):
    objects = render("--set", "podMonitor.enabled=true")
    monitor, deployment = one(objects, "PodMonitor"), one(objects, "Deployment")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_monitors_are_off_by_default(render):
    objects = render()
    assert by_kind(objects, "ServiceMonitor") == by_kind(objects, "PodMonitor") == []


def test_each_template_file_makes_one_kind(helm_bin):
    done = run_helm(helm_bin, "template", RELEASE, str(CHART), "-n", NAMESPACE, *NAMESPACED,
                    "--set", "serviceMonitor.enabled=true")
    kinds: dict[str, set[str]] = {}
    for doc in done.stdout.split("\n---\n"):
        source = re.search(r"^# Source: trtop/templates/(\S+)$", doc, re.MULTILINE)
        kind = re.search(r"^kind: (\w+)$", doc, re.MULTILINE)
        if source and kind:
            kinds.setdefault(source.group(1), set()).add(kind.group(1))
    assert kinds and all(len(k) == 1 for k in kinds.values()), kinds
