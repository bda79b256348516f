"""The planner across cluster shapes: builds, reuse, serving, widening, failures, updates."""
from dataclasses import replace

import pytest

from trtop import names
from trtop.planning.facts import ClusterFacts, DeploymentFact, JobFact
from trtop.planning.plan import plan_model_deployment
from trtop.serve.settings import parse_settings

from .conftest import live_of, md_body, record_for

NOW = "2026-11-24T00:00:00Z"


def plan(body, facts, settings, **kw):
    return plan_model_deployment(body, facts, settings, now=NOW, **kw)


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def terms(unit):
    return unit["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


def total_replicas(p):
    return sum(u["spec"]["replicas"] for u in p.units)


def test_fresh_cluster_builds_one_job_per_architecture(mixed_cluster, settings):
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    assert len(p.jobs_to_create) == 3
    assert p.units == ()  # nothing to serve yet
    names_ = {j["metadata"]["name"] for j in p.jobs_to_create}
    assert len(names_) == 3 and all(len(n) <= 63 for n in names_)
    assert p.status["phase"] == "Building" and p.status["enginesReady"] == "0/3"
    assert cond(p.status, "Ready")["status"] == "False"
    assert cond(p.status, "Reconciling")["status"] == "True"


def test_build_job_is_pinned_bounded_non_root_and_owned(mixed_cluster, settings):
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    job = next(j for j in p.jobs_to_create if "sm89" in j["metadata"]["name"])
    spec = job["spec"]
    pod = spec["template"]["spec"]
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
    assert {e["key"]: e["values"] for e in exprs} == {
        names.GFD_CC_MAJOR: ["8"], names.GFD_CC_MINOR: ["9"], names.GFD_PRODUCT: ["NVIDIA-L4", "NVIDIA-L4-SHARED"]}
    assert pod["containers"][0]["resources"]["limits"][names.GPU_RESOURCE] == "1"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 2 and spec["ttlSecondsAfterFinished"] > 0
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert names.ENV_ENGINE_REQUEST in env and job["metadata"]["labels"][names.LABEL_ENGINE_KEY] in env[names.ENV_ENGINE_REQUEST]


def test_same_facts_same_plan(mixed_cluster, settings):
    a = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    b = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    assert a.jobs_to_create == b.jobs_to_create and a.status == b.status


def test_running_jobs_are_not_duplicated(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    jobs = {e.key: JobFact(e.job_name, e.key, "active") for e in first.engines}
    again = plan(md_body(), ClusterFacts(nodes=mixed_cluster, jobs=jobs), settings)
    assert again.jobs_to_create == ()
    assert {e["state"] for e in again.status["engines"]} == {"Building"}


def test_existing_engines_are_reused_and_served(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    records = {e.key: record_for(e) for e in first.engines}
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster, records=records), settings)
    assert p.jobs_to_create == ()
    assert len(p.units) == 3  # one serving unit per architecture, each admitting only its own nodes
    assert all(len(terms(u)) == 1 for u in p.units)
    assert p.status["enginesReady"] == "3/3"
    assert cond(p.status, "EnginesReady")["status"] == "True"


def test_serving_starts_with_first_ready_engine_and_widens(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    h100 = next(e for e in first.engines if e.target.cc == "9.0")
    others = {e.key: JobFact(e.job_name, e.key, "active") for e in first.engines if e is not h100}
    p1 = plan(md_body(), ClusterFacts(nodes=mixed_cluster, records={h100.key: record_for(h100)}, jobs=others), settings)
    (unit,) = p1.units
    assert len(terms(unit)) == 1 and unit["spec"]["replicas"] == 1
    units, pods = live_of(p1)
    all_records = {e.key: record_for(e) for e in first.engines}
    p2 = plan(md_body(status=p1.status), ClusterFacts(nodes=mixed_cluster, records=all_records, units=units, pods=pods),
              settings)
    assert len(p2.units) == 3
    assert next(u for u in p2.units if u["metadata"]["name"] == unit["metadata"]["name"]) == unit  # untouched
    assert [u["spec"]["replicas"] for u in p2.units if u != unit] == [0, 0]  # the asked capacity is carried
    assert cond(p2.status, "Ready")["status"] == "True"


def test_failure_on_one_architecture_keeps_serving_the_others(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    l4 = next(e for e in first.engines if e.target.cc == "8.9")
    records = {e.key: record_for(e) for e in first.engines if e is not l4}
    jobs = {l4.key: JobFact(l4.job_name, l4.key, "failed", "BackoffLimitExceeded: exit code 3: out of memory")}
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster, records=records, jobs=jobs), settings)
    assert len(p.units) == 2 and p.jobs_to_create == ()
    assert cond(p.status, "Degraded")["status"] == "True"
    assert "out of memory" in cond(p.status, "EnginesReady")["message"]
    assert p.status["phase"] in ("Degraded", "Progressing")


def test_all_builds_failed_is_stalled_and_live_deployment_left_alone(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    jobs = {e.key: JobFact(e.job_name, e.key, "failed", "exit code 2: unsupported op Foo") for e in first.engines}
    live = DeploymentFact("resnet-sm90", "x", "old", 2, 2, 2, True, target="sm90")
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster, jobs=jobs, units=(live,)), settings)
    assert p.units == () and p.to_delete == ()  # never takes serving down
    assert [m["kind"] for m in p.to_apply] == ["Service"]
    assert cond(p.status, "Stalled")["status"] == "True" and p.status["phase"] == "Failed"


def test_job_success_without_published_engine_is_not_trusted(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster[:2]), settings)
    e = first.engines[0]
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster[:2], jobs={e.key: JobFact(e.job_name, e.key, "succeeded")}),
             settings)
    assert p.status["engines"][0]["state"] == "Failed"
    assert "no engine.json" in p.status["engines"][0]["message"]
    unreadable = replace(ClusterFacts(nodes=mixed_cluster[:2], jobs={e.key: JobFact(e.job_name, e.key, "succeeded")}),
                         store_error="timeout")
    assert plan(md_body(), unreadable, settings).status["engines"][0]["state"] == "Building"


def test_model_update_builds_first_then_rolls(mixed_cluster, settings):
    old = plan(md_body(), ClusterFacts(nodes=mixed_cluster[:2]), settings)
    old_records = {e.key: record_for(e) for e in old.engines}
    served = plan(md_body(), ClusterFacts(nodes=mixed_cluster[:2], records=old_records), settings)
    units, pods = live_of(served)
    new_body = md_body({"model": {"uri": "s3://models/resnet-v2", "format": "savedmodel"}}, generation=2,
                       status=served.status)
    building = plan(new_body, ClusterFacts(nodes=mixed_cluster[:2], records=old_records, units=units, pods=pods),
                    settings)
    assert len(building.jobs_to_create) == 1 and building.units == ()
    assert [m["kind"] for m in building.to_apply] == ["Service"]  # no unit is touched
    assert "previous model revision" in cond(building.status, "Reconciling")["message"]
    assert cond(building.status, "Ready")["status"] == "False"
    new_records = {**old_records, **{e.key: record_for(e) for e in building.engines}}
    rolled = plan(new_body, ClusterFacts(nodes=mixed_cluster[:2], records=new_records, units=units, pods=pods),
                  settings)
    assert [u["metadata"]["name"] for u in rolled.to_apply if u["kind"] == "Deployment"] == [
        u["metadata"]["name"] for u in served.units]
    assert rolled.status["previousEngines"] == list(old_records)
    # Old pods do not count as serving the new spec: not Ready until the new ones are.
    assert cond(rolled.status, "Ready")["status"] == "False" and rolled.status["readyReplicas"] == 0
    assert rolled.status["observedGeneration"] == 2


def test_no_gpu_nodes_is_stalled_with_actionable_message(settings):
    p = plan(md_body(), ClusterFacts(nodes=()), settings)
    assert cond(p.status, "Stalled")["status"] == "True"
    assert "GPU" in cond(p.status, "Stalled")["message"]


def test_conditions_keep_transition_time_when_unchanged(mixed_cluster, settings):
    p1 = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    body = md_body(status=p1.status)
    p2 = plan_model_deployment(body, ClusterFacts(nodes=mixed_cluster), settings, now="2030-01-01T00:00:00Z")
    assert p2.status["conditions"] == p1.status["conditions"]


def test_scale_modes(mixed_cluster, settings):
    records = {e.key: record_for(e) for e in plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings).engines}
    facts = ClusterFacts(nodes=mixed_cluster, records=records)
    fixed = md_body({"model": {"uri": "s3://models/resnet"}, "replicas": 3, "scaling": {"mode": "none"}})
    assert total_replicas(plan(fixed, facts, settings)) == 3
    builtin = md_body({"model": {"uri": "s3://models/resnet"}, "scaling": {"minReplicas": 2, "maxReplicas": 5}})
    assert total_replicas(plan(builtin, facts, settings)) == 2
    assert total_replicas(plan(builtin, facts, settings, autoscaled_replicas=4)) == 4
    asked = md_body({"model": {"uri": "s3://models/resnet"}, "scaling": {"minReplicas": 2, "maxReplicas": 5}},
                    status={"desiredReplicas": 4})  # after a restart: what was asked last time
    assert total_replicas(plan(asked, facts, settings)) == 4


def test_spec_errors_are_the_planned_status_not_exceptions(settings):
    p = plan(md_body({"model": {"uri": "ftp://nope"}}), ClusterFacts(), settings)
    assert p.spec is None and p.jobs_to_create == () and p.to_apply == ()
    assert cond(p.status, "Stalled")["reason"] == "InvalidSpec" and "model.uri" in cond(p.status, "Stalled")["message"]
    assert p.status["phase"] == "Stalled" and p.status["observedGeneration"] == 1


def test_cpu_target_serves_without_gpu(mixed_cluster, settings):
    body = md_body({"model": {"uri": "file:///models/m", "format": "keras"}, "engine": {"targets": ["cpu"]}})
    first = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    assert first.engines[0].request.backend == "onnxruntime"
    job_pod = first.jobs_to_create[0]["spec"]["template"]["spec"]
    assert names.GPU_RESOURCE not in job_pod["containers"][0]["resources"]["limits"]
    # The cpu target builds with the image without TensorRT (GPU targets keep the TensorRT one).
    assert job_pod["containers"][0]["image"] == settings.converter_cpu_image != settings.converter_image
    p = plan(body, ClusterFacts(nodes=mixed_cluster, records={first.engines[0].key: record_for(first.engines[0])}),
             settings)
    ctr = p.units[0]["spec"]["template"]["spec"]["containers"][0]
    assert names.GPU_RESOURCE not in ctr["resources"].get("limits", {})
    assert ctr["image"] == settings.server_cpu_image


def test_ignored_settings_are_reported_not_silent(mixed_cluster, settings):
    from trtop.planning.status import events_between

    body = md_body({"model": {"uri": "s3://models/resnet"}, "replicas": 5})
    p = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    assert any("spec.replicas=5 is ignored" in w for w in p.status["warnings"])
    events = events_between({}, p.status)
    assert any(e.reason == "SpecIgnored" and e.type == "Warning" for e in events)
    assert not any(e.reason == "SpecIgnored" for e in events_between(p.status, p.status))


def test_pod_labels_and_annotations_reach_build_and_serving_pods(mixed_cluster, settings):
    body = md_body({"model": {"uri": "s3://models/resnet"},
                    "engine": {"podAnnotations": {"sidecar.istio.io/inject": "false"}, "podLabels": {"team": "ml"}},
                    "serving": {"podAnnotations": {"a": "b"}}})
    first = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    meta = first.jobs_to_create[0]["spec"]["template"]["metadata"]
    assert meta["annotations"] == {"sidecar.istio.io/inject": "false"} and meta["labels"]["team"] == "ml"
    records = {e.key: record_for(e) for e in first.engines}
    served = plan(body, ClusterFacts(nodes=mixed_cluster, records=records), settings)
    assert all(u["spec"]["template"]["metadata"]["annotations"]["a"] == "b" for u in served.units)
    refused = plan(md_body({"model": {"uri": "s3://m"}, "engine": {"podLabels": {"app.kubernetes.io/name": "x"}}}),
                   ClusterFacts(), settings)
    assert refused.spec is None and "set by trtop" in refused.status["message"]


def test_build_jobs_follow_the_serving_node_selector(mixed_cluster, settings):
    body = md_body({"model": {"uri": "file:///m.keras", "format": "keras"}, "engine": {"targets": ["cpu"]},
                    "serving": {"nodeSelector": {"kubernetes.io/hostname": "cpu-1"}}})
    job = plan(body, ClusterFacts(nodes=mixed_cluster), settings).jobs_to_create[0]
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "cpu-1"}
    nowhere = md_body({"model": {"uri": "file:///m.keras", "format": "keras"}, "engine": {"targets": ["cpu"]},
                       "serving": {"nodeSelector": {"pool": "missing"}}})
    p = plan(nowhere, ClusterFacts(nodes=mixed_cluster), settings)
    assert p.jobs_to_create == () and p.status["engines"][0]["state"] == "Unschedulable"


@pytest.mark.parametrize("http_port,grpc_port", [(8000, 8001), (8001, 8002)])
def test_the_pod_and_the_service_expose_http_and_grpc(mixed_cluster, settings, http_port, grpc_port):
    body = md_body({"model": {"uri": "s3://models/resnet", "format": "savedmodel"}, "serving": {"port": http_port}})
    first = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    p = plan(body, ClusterFacts(nodes=mixed_cluster, records={e.key: record_for(e) for e in first.engines}),
             settings)
    ctr = p.units[0]["spec"]["template"]["spec"]["containers"][0]
    assert ctr["ports"] == [{"name": "http", "containerPort": http_port, "protocol": "TCP"},
                            {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"}]
    assert ctr["command"][ctr["command"].index("--grpc-port") + 1] == str(grpc_port)
    assert [(x["name"], x["port"], x["targetPort"], x.get("appProtocol")) for x in p.service["spec"]["ports"]] == [
        ("http", http_port, "http", None), ("grpc", grpc_port, "grpc", "grpc")]


def _server_commands(nodes, settings, serving):
    """Every unit's server command once the engines are ready (the second plan makes the units)."""
    body = md_body({"model": {"uri": "s3://models/resnet", "format": "savedmodel"}, "serving": serving})
    first = plan(body, ClusterFacts(nodes=nodes), settings)
    p = plan(body, ClusterFacts(nodes=nodes, records={e.key: record_for(e) for e in first.engines}), settings)
    assert p.units
    return [u["spec"]["template"]["spec"]["containers"][0]["command"] for u in p.units]


def _flag(command, name):
    return command[command.index(name) + 1] if name in command else None


@pytest.mark.parametrize("front_end,flag", [(None, None), ("python", "python"), ("native", "native"), ("auto", None)])
def test_the_server_runs_the_http_front_end_the_spec_names(mixed_cluster, settings, front_end, flag):
    serving = {} if front_end is None else {"httpFrontend": front_end}
    for command in _server_commands(mixed_cluster, settings, serving):  # every unit's, GPU and CPU alike
        # auto is the server's own default: no flag; python, the default before it, is named (objects made
        # while it was the default were stored with it and keep it)
        assert _flag(command, "--http-frontend") == flag
        assert parse_settings(command[2:], {}).http_frontend == (front_end or "auto")  # the server takes it


@pytest.mark.parametrize("keep_awake,flag", [(None, None), ("auto", None), ("off", "off"), ("on", "on")])
def test_the_server_keeps_its_cores_awake_as_the_spec_says(mixed_cluster, settings, keep_awake, flag):
    serving = {} if keep_awake is None else {"keepAwake": keep_awake}
    command = _server_commands(mixed_cluster, settings, serving)[0]
    # auto is the server's own default: no flag, so pods made before the field existed are left as they are
    assert _flag(command, "--keep-awake") == flag


@pytest.mark.parametrize("handoff,flag", [(None, None), ("on", None), ("off", "off")])
def test_the_servers_slot_handoff_is_turned_off_only_where_the_spec_says(mixed_cluster, settings, handoff, flag):
    serving = {} if handoff is None else {"slotHandoff": handoff}
    command = _server_commands(mixed_cluster, settings, serving)[0]
    # on is the server's own default: no flag, so pods made before the field existed are left as they are
    assert _flag(command, "--slot-handoff") == flag
    assert parse_settings(command[2:], {}).slot_handoff == (handoff or "on")  # the server takes it


def test_shared_memory_turns_the_servers_extension_on_and_sidecars_join_every_units_pods(mixed_cluster, settings):
    settings = replace(settings, allowed_images=("registry.example.com/*",))
    serving = {"sharedMemory": "system", "sidecars": [{
        "name": "pre", "image": "registry.example.com/pre:1", "args": ["--grpc", "localhost:8001"],
        "ports": [{"name": "metrics", "containerPort": 9100}], "resources": {"limits": {"cpu": "2"}}}]}
    body = md_body({"model": {"uri": "s3://models/resnet", "format": "savedmodel"}, "serving": serving})
    first = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    p = plan(body, ClusterFacts(nodes=mixed_cluster, records={e.key: record_for(e) for e in first.engines}),
             settings)
    assert len(p.units) > 1
    for unit in p.units:
        server, pre = unit["spec"]["template"]["spec"]["containers"]
        assert server["command"][server["command"].index("--shared-memory") + 1] == "system"
        assert pre["args"] == ["--grpc", "localhost:8001"] and pre["ports"][0]["containerPort"] == 9100
        assert pre["resources"] == {"limits": {"cpu": "2"}}  # the GPU stays the server's
        assert names.GPU_RESOURCE in server["resources"]["limits"]
    # Without the fields the pod template is what it was: no flag, one container, no sidecar volume.
    plain = md_body({"model": {"uri": "s3://models/resnet", "format": "savedmodel"}})
    q = plan(plain, ClusterFacts(nodes=mixed_cluster, records={e.key: record_for(e) for e in first.engines}),
             settings)
    pod = q.units[0]["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1 and "--shared-memory" not in pod["containers"][0]["command"]
    assert "sidecar-tmp" not in {v["name"] for v in pod["volumes"]}


def test_status_shows_each_engines_batch_buckets(mixed_cluster, settings):
    first = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    records = {e.key: replace(record_for(e), buckets=(1, 2, 4, 8)) for e in first.engines}
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster, records=records), settings)
    assert [e["batchSizes"] for e in p.status["engines"]] == [[1, 2, 4, 8]] * 3
