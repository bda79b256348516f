"""RBAC of least privilege: what the operator (trtop.k8s + kopf) does is allowed, nothing else.

Cluster-wide: one ClusterRole. Namespaced: a Role per watched namespace for everything it
changes, plus a read-only ClusterRole for what is cluster-scoped by nature (nodes, the CRDs
and namespaces kopf observes) and no access to other namespaces' pods. No verb the operator
does not use (no update; the one delete is a serving unit whose GPU type left: TTLs and owner
references clean up the rest), and update on
modeldeployments/finalizers for blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
The e2e twin (test_cluster.py) asks the real API server with `kubectl auth can-i`.
"""
from __future__ import annotations

import pytest

from tests.charts.chart import NAMESPACE, NAMESPACED_VALUES, RELEASE, by_kind, one

NAMESPACED = ("-f", str(NAMESPACED_VALUES))

# (apiGroup, resource, verbs) the operator uses inside each namespace it serves.
IN_NAMESPACE = [
    ("trtop.io", "modeldeployments", {"get", "list", "watch", "patch"}),
    ("trtop.io", "modeldeployments/status", {"get", "patch"}),
    ("trtop.io", "modeldeployments/finalizers", {"update"}),
    ("batch", "jobs", {"get", "list", "watch", "create"}),
    ("apps", "deployments", {"get", "list", "watch", "create", "patch", "delete"}),  # a unit whose GPU type left
    ("", "services", {"get", "list", "watch", "create", "patch"}),
    ("", "pods", {"get", "list", "watch"}),
    ("", "resourcequotas", {"get", "list", "watch"}),  # a raised quota: refused units try again at once
    ("", "limitranges", {"get", "list", "watch"}),  # the same for a LimitRange
    ("", "events", {"create"}),  # kopf and trtop.k8s.events post, never patch
]
# Cluster-scoped reads both modes need.
CLUSTER_READS = [
    ("", "nodes", {"get", "list", "watch"}),
    ("apiextensions.k8s.io", "customresourcedefinitions", {"list", "watch"}),
]
# Verbs nothing in trtop uses (the operator never updates what it made; it deletes only serving units).
UNUSED = [
    ("trtop.io", "modeldeployments", {"update", "delete"}),
    ("trtop.io", "modeldeployments/status", {"update"}),
    ("batch", "jobs", {"update", "patch", "delete"}),
    ("apps", "deployments", {"update"}),
    ("", "services", {"update", "delete"}),
    ("", "events", {"patch", "update", "delete", "deletecollection"}),  # other tenants' Events stay theirs
    ("", "resourcequotas", {"create", "update", "patch", "delete"}),  # read only: a namespace's limits are not ours
    ("", "limitranges", {"create", "update", "patch", "delete"}),
]
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
DANGEROUS_VERBS = {"escalate", "bind", "impersonate", "*"}


def allowed(rules, group, resource):
    verbs: set[str] = set()
    for rule in rules:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule["verbs"])
    return verbs


def assert_grants(rules, needs):
    for group, resource, verbs in needs:
        missing = verbs - allowed(rules, group, resource)
        assert not missing, f"{group or 'core'}/{resource} lacks {sorted(missing)}"


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_no_wildcards_secrets_or_escalation(render, mode):
    objects = render(*(NAMESPACED if mode == "namespaced" else ()))
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] and "*" not in rule["resources"], rule
            assert not set(rule["verbs"]) & DANGEROUS_VERBS, rule
            assert not {"secrets", "configmaps", "serviceaccounts", "roles", "rolebindings", "clusterroles",
                        "clusterrolebindings", "nodes/proxy", "pods/exec"} & set(rule["resources"]), rule


def test_cluster_wide_grants_everything_in_one_cluster_role(render):
    objects = render()
    role = one(objects, "ClusterRole")
    assert_grants(role["rules"], IN_NAMESPACE + CLUSTER_READS)
    for group, resource, verbs in UNUSED:
        assert not allowed(role["rules"], group, resource) & verbs, (group, resource)
    assert_grants(role["rules"], [("kopf.dev", "clusterkopfpeerings", {"get", "list", "watch", "patch"})])
    # A cluster-wide kopf operator never lists namespaces: least privilege leaves them out.
    assert allowed(role["rules"], "", "namespaces") == set()
    assert by_kind(objects, "Role") == by_kind(objects, "RoleBinding") == []
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_namespaced_grants_changes_only_in_the_watched_namespaces(render):
    objects = render(*NAMESPACED)
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert_grants(role["rules"], IN_NAMESPACE + [("kopf.dev", "kopfpeerings", {"get", "list", "watch", "patch"})])
        for group, resource, verbs in UNUSED:
            assert not allowed(role["rules"], group, resource) & verbs, (group, resource)
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RELEASE}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_namespaced_cluster_role_only_reads(render):
    role = one(render(*NAMESPACED), "ClusterRole")
    assert role["metadata"]["name"] == f"{RELEASE}-cluster-read"
    assert_grants(role["rules"], CLUSTER_READS + [("", "namespaces", {"list", "watch"})])
    for rule in role["rules"]:
        assert not set(rule["verbs"]) & WRITE_VERBS, rule
    # No pods: a namespaced operator cannot list other namespaces' pods (it counts its own GPU use).
    assert {r for rule in role["rules"] for r in rule["resources"]} == {
        "nodes", "customresourcedefinitions", "namespaces"}
