"""The watch-fed cache: indices from events, and which ModelDeployments each change concerns."""
from trtop import names
from trtop.api.targets import Target
from trtop.k8s.cache import ClusterCache
from trtop.k8s.observe import USER_ERROR_EXIT
from trtop.planning.serving import unit_name

L4 = {names.GFD_CC_MAJOR: "8", names.GFD_CC_MINOR: "9", names.GFD_PRODUCT: "NVIDIA-L4"}
T4 = {names.GFD_CC_MAJOR: "7", names.GFD_CC_MINOR: "5", names.GFD_PRODUCT: "Tesla-T4"}


def node(name, labels, gpus=4, ready=True, unschedulable=False, rv="1"):
    return {"metadata": {"name": name, "labels": dict(labels), "resourceVersion": rv},
            "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {names.GPU_RESOURCE: str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def md(name, spec, uid=None, generation=1, rv="1"):
    return {"metadata": {"name": name, "namespace": "ml", "uid": uid or f"uid-{name}", "generation": generation,
                         "resourceVersion": rv}, "spec": spec}


def build_job(name, engine_key, uid, conditions=None):
    return {"metadata": {"name": name, "namespace": "ml", "uid": uid, "labels": {names.LABEL_ENGINE_KEY: engine_key}},
            "status": {"conditions": conditions} if conditions else {}}


def owned_by(uid):
    return [{"uid": uid, "controller": True}]


def world():
    c = ClusterCache(clock=lambda: 5000.0)
    c.on_node("ADDED", node("l4-0", L4))
    c.on_node("ADDED", node("cpu-0", {}))
    auto = {"model": {"uri": "s3://m/a"}}
    c.on_model_deployment("ADDED", md("auto", auto))
    c.on_model_deployment("ADDED", md("cpu", {"model": {"uri": "s3://m/c"}, "engine": {"targets": ["cpu"]}}))
    c.on_model_deployment("ADDED", md("l4only", {"model": {"uri": "s3://m/l"}, "engine": {"targets": ["8.9"]}}))
    c.on_model_deployment("ADDED", md("pinned", {**auto, "serving": {"nodeSelector": {"pool": "x"}}}))
    return c


def test_a_new_gpu_type_concerns_only_objects_whose_targets_can_include_it():
    c = world()
    assert c.on_node("ADDED", node("t4-0", T4)) == [("ml", "auto")]


def test_heartbeats_and_unrelated_label_churn_concern_nobody():
    c = world()
    again = node("l4-0", L4, rv="2")
    again["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:01:00Z"
    assert c.on_node("MODIFIED", again) == []


def test_a_cordon_concerns_the_objects_served_there_and_is_remembered():
    c = world()
    assert sorted(c.on_node("MODIFIED", node("l4-0", L4, unschedulable=True, rv="2"))) == [
        ("ml", "auto"), ("ml", "l4only")]
    fact = next(n for n in c.nodes() if n.name == "l4-0")
    assert not fact.schedulable and fact.down_since == 5000.0


def test_own_status_writes_do_not_requeue_but_a_new_generation_does():
    c = world()
    c.handled(("ml", "auto"), 1, ())
    assert c.on_model_deployment("MODIFIED", md("auto", {"model": {"uri": "s3://m/a"}}, rv="5")) == []
    assert c.on_model_deployment("MODIFIED", md("auto", {"model": {"uri": "s3://m/b"}}, generation=2,
                                                rv="6")) == [("ml", "auto")]
    c.remember_status_write(md("auto", {"model": {"uri": "s3://m/b"}}, generation=2, rv="9"))
    assert c.on_model_deployment("MODIFIED", md("auto", {}, generation=2, rv="7")) == []  # older than ours
    assert c.model_deployment(("ml", "auto"))["metadata"]["resourceVersion"] == "9"


def test_job_events_concern_every_user_of_the_key_and_carry_failure_messages():
    c = world()
    c.handled(("ml", "auto"), 1, ("k1",))
    c.handled(("ml", "l4only"), 1, ("k1",))
    job = build_job("trtop-sm89-k1", "k1", "job-1")
    assert c.on_job("ADDED", job) == [("ml", "auto"), ("ml", "l4only")]
    assert c.on_job("MODIFIED", job) == []  # nothing the planner reads changed
    pod = {"metadata": {"name": "p", "namespace": "ml", "ownerReferences": owned_by("job-1"), "labels": {
        "job-name": "trtop-sm89-k1", names.LABEL_COMPONENT: names.COMPONENT_ENGINE_BUILD,
        names.LABEL_ENGINE_KEY: "k1"}},
        "spec": {"nodeName": "l4-0", "containers": [{"resources": {"limits": {names.GPU_RESOURCE: "1"}}}]},
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
            "exitCode": 2, "message": '{"error": "unsupported op Foo"}'}}}]}}
    c.on_pod("MODIFIED", pod)
    failed = {**job, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    c.on_job("MODIFIED", failed)
    fact = c.jobs("ml")["k1"]
    assert fact.state == "failed" and fact.user_error and "unsupported op Foo" in fact.message


def test_a_build_pod_that_cannot_start_says_why_in_its_jobs_fact_and_requeues_its_users():
    c = world()
    c.handled(("ml", "auto"), 1, ("k1",))
    c.on_job("ADDED", build_job("trtop-k1", "k1", "job-1"))
    pending = {"metadata": {"name": "trtop-k1-x", "namespace": "ml", "ownerReferences": owned_by("job-1"), "labels": {
        "job-name": "trtop-k1", names.LABEL_COMPONENT: names.COMPONENT_ENGINE_BUILD, names.LABEL_ENGINE_KEY: "k1"}},
        "spec": {}, "status": {"phase": "Pending"}}
    assert c.on_pod("ADDED", pending) == []  # not scheduled yet: nothing to say
    stuck = {**pending, "status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": '0/7 nodes are available: persistentvolumeclaim "models" not found.'}]}}
    assert c.on_pod("MODIFIED", stuck) == [("ml", "auto")]
    assert c.on_pod("MODIFIED", stuck) == []  # the same reason again concerns nobody
    fact = c.jobs("ml")["k1"]
    assert fact.state == "active" and 'persistentvolumeclaim "models" not found' in fact.message
    running = {**pending, "spec": {"nodeName": "cpu-0"}, "status": {"phase": "Running"}}
    assert c.on_pod("MODIFIED", running) == [("ml", "auto")]  # unstuck: the message goes away
    assert c.jobs("ml")["k1"].message == ""


def test_a_stuck_build_pod_concerns_the_object_that_made_its_job_before_it_is_a_known_user():
    c = world()  # no reconcile has recorded ("ml", "auto") as a user of k1 yet
    stuck = {"metadata": {"name": "trtop-k1-x", "namespace": "ml", "labels": {
        "job-name": "trtop-k1", names.LABEL_COMPONENT: names.COMPONENT_ENGINE_BUILD, names.LABEL_ENGINE_KEY: "k1",
        names.LABEL_MODEL_DEPLOYMENT: "auto"}},
        "spec": {}, "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no room"}]}}
    assert c.on_pod("ADDED", stuck) == [("ml", "auto")]


def test_gpu_requests_follow_pods_onto_and_off_nodes():
    c = world()
    pod = {"metadata": {"name": "s", "namespace": "ml", "labels": {}},
           "spec": {"nodeName": "l4-0", "containers": [{"resources": {"limits": {names.GPU_RESOURCE: "2"}}}]},
           "status": {"phase": "Running"}}
    c.on_pod("ADDED", pod)
    assert next(n for n in c.nodes() if n.name == "l4-0").gpu_requested == 2
    c.on_pod("DELETED", pod)
    assert next(n for n in c.nodes() if n.name == "l4-0").gpu_requested == 0


def test_a_plan_with_other_engines_replaces_the_objects_keys_and_a_deletion_drops_them():
    c = world()
    c.handled(("ml", "auto"), 1, ("k1", "k2"))
    c.handled(("ml", "auto"), 2, ("k3",))
    job = {"metadata": {"name": "trtop-k1", "namespace": "ml", "labels": {names.LABEL_ENGINE_KEY: "k1"}}, "status": {}}
    assert c.on_job("ADDED", job) == []
    job3 = {"metadata": {"name": "trtop-k3", "namespace": "ml", "labels": {names.LABEL_ENGINE_KEY: "k3"}}, "status": {}}
    assert c.on_job("ADDED", job3) == [("ml", "auto")]
    assert set(c.jobs("ml", ("k3", "k9"))) == {"k3"}
    c.on_model_deployment("DELETED", md("auto", {}))
    assert "k3" not in c.users_of_key


def deployment(name, owner_uid, rv, replicas=2, target="sm90"):
    return {"kind": "Deployment", "metadata": {
        "name": name, "namespace": "ml", "resourceVersion": rv, "labels": {names.LABEL_TARGET: target},
        "ownerReferences": [{"uid": owner_uid, "controller": True}]}, "spec": {"replicas": replicas}, "status": {}}


def test_a_unit_the_operator_applied_is_its_owners_before_the_watch_says_so():
    c = world()
    c.remember_applied(deployment("auto-sm90", "uid-auto", "10"))
    assert [u.name for u in c.units("uid-auto")] == ["auto-sm90"]
    assert c.units("uid-auto")[0].replicas == 2
    c.on_deployment("ADDED", deployment("auto-sm90", "uid-auto", "9", replicas=0))  # the lagging event
    assert c.units("uid-auto")[0].replicas == 2  # the newer object is kept
    c.on_deployment("DELETED", deployment("auto-sm90", "uid-auto", "11"))
    assert c.units("uid-auto") == ()


def test_a_unit_whose_pods_the_api_server_refuses_says_why_without_the_pods_name():
    """The Deployment's ReplicaFailure (a ResourceQuota, a webhook) is the unit's fact; the refused pod's name, new
    at every retry of the ReplicaSet, is left out (else each retry would write the status again)."""
    c = world()
    body = deployment("auto-sm90", "uid-auto", "10", replicas=3)
    c.on_deployment("ADDED", body)
    assert c.units("uid-auto")[0].refused == ""
    for pod in ("auto-sm90-5f6c7d8b9-x2x4k", "auto-sm90-5f6c7d8b9-q8z7m"):
        body = {**body, "status": {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                                   "message": f'pods "{pod}" is forbidden: exceeded quota: gpus, '
                                                              "requested: requests.nvidia.com/gpu=1, used: "
                                                              "requests.nvidia.com/gpu=1, limited: "
                                                              "requests.nvidia.com/gpu=1"}]}}
        c.on_deployment("MODIFIED", body)
        assert c.units("uid-auto")[0].refused == (
            "exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=1, "
            "limited: requests.nvidia.com/gpu=1")
    c.on_deployment("MODIFIED", {**body, "status": {"conditions": []}})
    assert c.units("uid-auto")[0].refused == ""


_versions = iter(range(1000, 10**6))


def quota(name, hard, namespace="ml", used=None):
    """A ResourceQuota as the API server sends it: each write a new resourceVersion."""
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(next(_versions))},
            "spec": {"hard": hard}, "status": {"hard": hard, "used": used or {}}}


def test_a_raised_quota_concerns_the_objects_of_its_namespace_with_refused_units_and_changes_the_admission_state():
    """ResourceQuota limits (status.hard: what admission enforces) are the admission state of their namespace; a change
    queues the objects with a refused unit there (they try again at once), none elsewhere, and more usage nobody."""
    c = world()
    c.on_model_deployment("ADDED", md("other", {"model": {"uri": "s3://m/o"}}, uid="uid-other"))
    refused = {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                               "message": "exceeded quota: gpus"}]}
    c.on_deployment("ADDED", {**deployment("auto-sm90", "uid-auto", "10"), "status": refused})
    c.on_deployment("ADDED", deployment("other-sm90", "uid-other", "11"))  # not refused
    assert c.admission_state("ml") == ""
    assert c.on_admission_policy("ResourceQuota", "ADDED", quota("gpus", {"requests.nvidia.com/gpu": "1"})) == [
        ("ml", "auto")]
    first = c.admission_state("ml")
    assert first and c.admission_state("team-b") == ""
    # The quota controller's usage updates: the limits are the same, nothing to retry.
    assert c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", {"requests.nvidia.com/gpu": "1"},
                                                                    used={"requests.nvidia.com/gpu": "1"})) == []
    assert c.admission_state("ml") == first
    # Another namespace's quota: its own objects only, and its own state.
    assert c.on_admission_policy("ResourceQuota", "ADDED",
                                 quota("gpus", {"requests.nvidia.com/gpu": "9"}, namespace="team-b")) == []
    assert c.admission_state("ml") == first
    raised = c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", {"requests.nvidia.com/gpu": "3"}))
    assert raised == [("ml", "auto")] and c.admission_state("ml") not in ("", first)
    assert c.on_admission_policy("ResourceQuota", "DELETED", quota("gpus", {"requests.nvidia.com/gpu": "3"})) == [
        ("ml", "auto")]
    assert c.admission_state("ml") == ""
    assert c.on_admission_policy("ResourceQuota", "DELETED", quota("gpus", {})) == []  # already gone


def test_a_quota_with_room_again_retries_refused_units_but_more_usage_does_not():
    """The usual way a quota frees up: another workload of the namespace ends, its usage falls, the limits stay.
    That retries the refused units at once; more usage (pods starting) does not write them again."""
    c = world()
    refused = {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                               "message": "exceeded quota: gpus"}]}
    c.on_deployment("ADDED", {**deployment("auto-sm90", "uid-auto", "10"), "status": refused})
    gpus = {"requests.nvidia.com/gpu": "2"}
    assert c.on_admission_policy("ResourceQuota", "ADDED", quota("gpus", gpus, used={
        "requests.nvidia.com/gpu": "1"})) == [("ml", "auto")]
    first = c.admission_state("ml")
    for used in ("2", "2"):  # fuller, then a write of the same usage: no more room
        assert c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", gpus, used={
            "requests.nvidia.com/gpu": used})) == []
    assert c.admission_state("ml") == first
    # Usage falls back to what it was at the first reading: room again, and a state of its own.
    assert c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", gpus, used={
        "requests.nvidia.com/gpu": "1"})) == [("ml", "auto")]
    freed = c.admission_state("ml")
    assert freed not in ("", first)
    # A resource no longer used at all, or a usage that cannot be read: room, as far as trtop can tell.
    assert c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", gpus, used={})) == [("ml", "auto")]
    c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", gpus, used={"requests.nvidia.com/gpu": "1"}))
    assert c.on_admission_policy("ResourceQuota", "MODIFIED", quota("gpus", gpus, used={
        "requests.nvidia.com/gpu": "lots"})) == [("ml", "auto")]
    assert len({first, freed, c.admission_state("ml")}) == 3


def test_a_changed_limit_range_retries_refused_units_and_a_quota_of_the_same_name_is_another_policy():
    """A LimitRange refuses pods too (a container's limits past its max): its spec.limits join the namespace's
    admission state, so raising them retries the refused units at once, like a raised quota."""
    c = world()
    refused = {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                               "message": "maximum cpu usage per Container is 1, but limit is 2"}]}
    c.on_deployment("ADDED", {**deployment("auto-sm90", "uid-auto", "10"), "status": refused})
    limit = {"metadata": {"name": "caps", "namespace": "ml"},
             "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}}
    assert c.on_admission_policy("LimitRange", "ADDED", limit) == [("ml", "auto")]
    first = c.admission_state("ml")
    assert first and c.on_admission_policy("LimitRange", "MODIFIED", limit) == []  # the same limits: nothing
    assert c.on_admission_policy("ResourceQuota", "ADDED", quota("caps", {"pods": "10"})) == [("ml", "auto")]
    both = c.admission_state("ml")
    raised = {**limit, "spec": {"limits": [{"type": "Container", "max": {"cpu": "4"}}]}}
    assert c.on_admission_policy("LimitRange", "MODIFIED", raised) == [("ml", "auto")]
    assert c.admission_state("ml") not in ("", first, both)
    assert c.on_admission_policy("LimitRange", "DELETED", raised) == [("ml", "auto")]
    only_quota = c.admission_state("ml")
    assert only_quota not in ("", first, both)  # the quota of the same name is still there
    c.on_admission_policy("ResourceQuota", "DELETED", quota("caps", {}))
    assert c.admission_state("ml") == ""


# A deleted object leaves nothing behind (thousands of objects, months of uptime, names that come back).
NODE_INDICES = {"_nodes", "_node_facts", "_down_since"}  # the cluster's nodes: they stay


def leftovers(c):
    """Every index of the cache that still holds something, bar the nodes'."""
    return {name: value for name, value in vars(c).items()
            if isinstance(value, (dict, set)) and value and name not in NODE_INDICES}


def failed_build_pod(job_name, job_uid, message, exit_code=1):
    return {"metadata": {"name": f"{job_name}-x", "namespace": "ml", "ownerReferences": owned_by(job_uid), "labels": {
        "job-name": job_name, names.LABEL_COMPONENT: names.COMPONENT_ENGINE_BUILD, names.LABEL_ENGINE_KEY: "k1"}},
        "spec": {"nodeName": "l4-0", "containers": [{"resources": {"limits": {names.GPU_RESOURCE: "1"}}}]},
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
            "exitCode": exit_code, "message": message}}}]}}


FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]


def test_an_object_and_its_children_deleted_leave_no_entry_behind():
    c = ClusterCache()
    c.on_node("ADDED", node("l4-0", L4))
    c.on_model_deployment("ADDED", md("auto", {"model": {"uri": "s3://m/a"}}))
    c.handled(("ml", "auto"), 1, ("k1",))
    c.note_absent(("ml", "auto-sm89"), "Deployment", "serving")
    unit = deployment("auto-sm89", "uid-auto", "3")
    c.on_deployment("ADDED", unit)
    serving = {"metadata": {"name": "auto-sm89-p", "namespace": "ml", "ownerReferences": REPLICA_SET, "labels": {
        names.LABEL_MODEL_DEPLOYMENT: "auto", names.LABEL_COMPONENT: names.COMPONENT_INFERENCE}},
        "spec": {"nodeName": "l4-0", "containers": [{"resources": {"limits": {names.GPU_RESOURCE: "1"}}}]},
        "status": {"phase": "Running"}}
    c.on_pod("ADDED", serving)
    job = build_job("trtop-sm89-k1", "k1", "job-1", FAILED)
    c.on_job("ADDED", job)
    build = failed_build_pod("trtop-sm89-k1", "job-1", "unsupported op Foo")
    c.on_pod("MODIFIED", build)
    assert c.jobs("ml")["k1"].message.endswith("unsupported op Foo")
    c.on_pod("DELETED", serving)
    c.on_deployment("DELETED", unit)
    c.on_job("DELETED", job)
    c.on_pod("DELETED", build)  # after its Job: the garbage collector's order
    c.on_model_deployment("DELETED", md("auto", {}))
    assert leftovers(c) == {}


def test_a_recreated_job_of_the_same_name_never_shows_the_last_ones_failure():
    c = world()
    old = build_job("trtop-sm89-k1", "k1", "job-1", FAILED)
    c.on_job("ADDED", old)
    c.on_pod("MODIFIED", failed_build_pod("trtop-sm89-k1", "job-1", '{"error": "bad model"}', USER_ERROR_EXIT))
    assert c.jobs("ml")["k1"].user_error
    c.on_job("DELETED", old)  # retryAfterSeconds later: the Job is removed, a new one of its name made
    c.on_job("ADDED", build_job("trtop-sm89-k1", "k1", "job-2", FAILED))  # failed before any pod said why
    fact = c.jobs("ml")["k1"]
    assert fact.message == "BackoffLimitExceeded" and not fact.user_error


def test_a_job_replaced_while_the_watch_missed_its_delete_drops_the_old_ones_detail():
    c = world()
    c.on_job("ADDED", build_job("trtop-sm89-k1", "k1", "job-1", FAILED))
    c.on_pod("MODIFIED", failed_build_pod("trtop-sm89-k1", "job-1", '{"error": "bad model"}', USER_ERROR_EXIT))
    c.on_job("ADDED", build_job("trtop-sm89-k1", "k1", "job-2", FAILED))  # no DELETED for job-1 came
    fact = c.jobs("ml")["k1"]
    assert fact.message == "BackoffLimitExceeded" and not fact.user_error
    assert c._job_pods == {}


def test_a_deleted_objects_units_are_asked_about_again_by_the_next_object_of_its_name():
    c = world()
    long = "m" * 60
    long_unit = unit_name(long, Target.parse("8.9/NVIDIA-L4"))
    assert not long_unit.startswith(long)  # cut and hashed
    c.on_model_deployment("ADDED", md(long, {}))
    for key, kind in [(("ml", "auto"), "Service"), (("ml", "auto-sm89"), "Deployment"),
                      (("ml", long_unit), "Deployment"), (("ml", "bert-sm89"), "Deployment")]:
        c.note_absent(key, kind, "serving")
    c.on_model_deployment("DELETED", md("auto", {}))
    c.on_model_deployment("DELETED", md(long, {}))
    assert not c.known_absent(("ml", "auto"), "Service", "serving")
    assert not c.known_absent(("ml", "auto-sm89"), "Deployment", "serving")
    assert not c.known_absent(("ml", long_unit), "Deployment", "serving")
    assert c.known_absent(("ml", "bert-sm89"), "Deployment", "serving")  # another object's: still known


def test_a_deployment_or_service_the_watch_shows_is_no_longer_known_absent():
    c = world()
    c.note_absent(("ml", "auto-sm90"), "Deployment", "serving")
    c.note_absent(("ml", "auto"), "Service", "new")
    c.on_deployment("ADDED", deployment("auto-sm90", "uid-auto", "3"))
    c.on_service("ADDED", {"metadata": {"name": "auto", "namespace": "ml", "resourceVersion": "4"}})
    c.on_deployment("DELETED", deployment("auto-sm90", "uid-auto", "5"))
    assert not c.known_absent(("ml", "auto-sm90"), "Deployment", "serving")  # gone again: asked again
    assert not c.known_absent(("ml", "auto"), "Service", "new")
    c.note_absent(("ml", "auto-sm90"), "Deployment", "serving")
    c.remember_applied(deployment("auto-sm90", "uid-auto", "6"))
    assert not c.known_absent(("ml", "auto-sm90"), "Deployment", "serving")


def test_a_new_object_of_a_known_name_replaces_the_old_ones_entries_and_forgets_it():
    c = world()
    forgotten = []
    c.when_forgotten(lambda uid, keys: forgotten.append((uid, keys)))
    c.handled(("ml", "auto"), 1, ("k1",))
    c.note_absent(("ml", "auto-sm89"), "Deployment", "serving")
    assert c.on_model_deployment("ADDED", md("auto", {"model": {"uri": "s3://m/a"}}, uid="uid-2", rv="7")) == [
        ("ml", "auto")]  # its delete was missed: the new object is reconciled from nothing
    assert forgotten == [("uid-auto", ("k1",))]
    assert "uid-auto" not in c._uids and "k1" not in c.users_of_key
    assert not c.known_absent(("ml", "auto-sm89"), "Deployment", "serving")
    c.on_model_deployment("DELETED", md("auto", {}, uid="uid-auto"))  # the late delete of the old one
    assert c.model_deployment(("ml", "auto"))["metadata"]["uid"] == "uid-2"


def test_a_status_write_answered_after_the_delete_does_not_bring_the_object_back():
    c = world()
    c.on_model_deployment("DELETED", md("auto", {}))
    c.remember_status_write(md("auto", {}, rv="9"))
    assert c.model_deployment(("ml", "auto")) is None and ("ml", "auto") not in c.keys()


def test_the_watch_event_of_a_job_this_process_claimed_concerns_nobody():
    c = world()
    c.handled(("ml", "auto"), 1, ("k1",))
    job = build_job("trtop-sm89-k1", "k1", "job-1")
    assert c.claim_job(job)
    assert c.on_job("ADDED", job) == []  # the same Job, now with its uid: no second reconcile


def test_a_store_sharing_group_builds_each_key_once_and_every_member_sees_the_job():
    group = ("team-a", "team-b")
    c = ClusterCache(peers=lambda ns: (ns, *sorted(set(group) - {ns})) if ns in group else (ns,))
    for ns in ("team-a", "team-b", "team-c"):
        body = md("m", {"model": {"uri": "s3://m/a"}}, uid=f"uid-{ns}")
        c.on_model_deployment("ADDED", {**body, "metadata": {**body["metadata"], "namespace": ns}})
        c.handled((ns, "m"), 1, ("k1",))

    def job_in(ns, uid):
        job = build_job("trtop-k1", "k1", uid)
        return {**job, "metadata": {**job["metadata"], "namespace": ns}}
    assert c.claim_job(job_in("team-a", ""))
    assert not c.claim_job(job_in("team-b", ""))  # the group's one build is on its way
    assert c.claim_job(job_in("team-c", ""))  # not in the group: its key is its own anyway
    c.release_job(job_in("team-c", ""))
    assert c.jobs("team-b", ("k1",))["k1"].name == "team-a/trtop-k1"
    assert c.jobs("team-a", ("k1",))["k1"].name == "trtop-k1"
    assert c.jobs("team-c", ("k1",)) == {}
    # Its events wake the group's users of the key, no other namespace's.
    failed = {**job_in("team-a", "job-a"),
              "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    assert c.on_job("MODIFIED", failed) == [("team-a", "m"), ("team-b", "m")]
    assert c.jobs("team-b")["k1"].state == "failed"
    # A Job of its own wins over a peer's.
    c.on_job("ADDED", job_in("team-b", "job-b"))
    assert c.jobs("team-b")["k1"] == c.jobs("team-b", ("k1",))["k1"]
    assert (c.jobs("team-b")["k1"].name, c.jobs("team-b")["k1"].state) == ("trtop-k1", "active")
    c.on_job("DELETED", failed)
    c.on_job("DELETED", job_in("team-b", "job-b"))
    assert c.jobs("team-a") == c.jobs("team-b") == {} and c.claim_job(job_in("team-b", ""))


# A unit's pods belong to its Deployment's ReplicaSet.
REPLICA_SET = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "auto-sm89-5d4f", "uid": "rs-1",
                "controller": True}]


def serving_pod(name, namespace, slug, *, node=None, unschedulable=False, owners=REPLICA_SET, ready=False):
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}] if unschedulable else []
    conditions += [{"type": "Ready", "status": "True"}] if ready else []
    return {"metadata": {"name": name, "namespace": namespace, "ownerReferences": owners,
                         "labels": {names.LABEL_MODEL_DEPLOYMENT: "auto", names.LABEL_TARGET: slug,
                                    names.LABEL_COMPONENT: names.COMPONENT_INFERENCE}},
            "spec": {"nodeName": node, "containers": [{"resources": {"limits": {names.GPU_RESOURCE: "1"}}}]},
            "status": {"phase": "Pending" if node is None else "Running", "conditions": conditions}}


def test_an_architecture_whose_serving_pod_found_no_node_is_full_in_its_namespace_for_a_while():
    """The scheduler's verdict beside the GPU count (which misses pods the operator does not watch): kept for
    FULL_SECONDS, dropped at once when a pod of that architecture finds a node, and only for the pod's namespace
    (a tenant's pods steer only its own placement)."""
    from trtop.k8s.cache import FULL_SECONDS
    now = [1000.0]
    c = ClusterCache(clock=lambda: now[0])
    c.on_pod("ADDED", serving_pod("a-1", "ml", "sm90-h100", unschedulable=True))
    c.on_pod("ADDED", serving_pod("b-1", "ml", "sm89-nvidia-l4", node="l4-0"))
    assert c.full_targets("ml") == {"sm90-h100"} and c.full_targets("other") == frozenset()
    c.on_pod("DELETED", serving_pod("a-1", "ml", "sm90-h100", unschedulable=True))  # moved elsewhere: still full
    now[0] += FULL_SECONDS - 1
    assert c.full_targets("ml") == {"sm90-h100"}
    now[0] += 1
    assert c.full_targets("ml") == frozenset()  # time to try it again
    c.on_pod("ADDED", serving_pod("a-2", "ml", "sm90-h100", unschedulable=True))
    c.on_pod("MODIFIED", serving_pod("a-2", "ml", "sm90-h100", node="h100-0"))  # a GPU came free
    assert c.full_targets("ml") == frozenset()


def test_only_a_replica_sets_pods_are_a_units_serving_pods():
    """The labels of a serving pod are anyone's to copy (a bare pod from its manifest, a debug copy): such a pod is
    not counted as capacity, not scraped for load and marks no architecture full; a pod its ReplicaSet let go of
    (orphaned) leaves the count, and the change concerns its object."""
    c = world()
    key = ("ml", "auto")
    assert c.on_pod("ADDED", serving_pod("auto-sm89-a", "ml", "sm89", node="l4-0", ready=True)) == [key]
    bare = serving_pod("copy", "ml", "sm89", node="l4-0", ready=True, owners=[])
    job = [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "j-1", "controller": True}]
    stuck = serving_pod("stray", "ml", "sm90-h100", unschedulable=True, owners=job)
    assert c.on_pod("ADDED", bare) == [] and c.on_pod("ADDED", stuck) == []
    assert [p.name for p in c.pod_facts(key)] == ["auto-sm89-a"]
    assert [p["metadata"]["name"] for p in c.serving_pods(key)] == ["auto-sm89-a"]
    assert c.full_targets("ml") == frozenset()
    assert next(n for n in c.nodes() if n.name == "l4-0").gpu_requested == 2  # the GPUs they hold still count
    assert c.on_pod("MODIFIED", serving_pod("auto-sm89-a", "ml", "sm89", node="l4-0", ready=True, owners=[])) == [key]
    assert c.pod_facts(key) == () and c.serving_pods(key) == []
