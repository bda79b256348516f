"""values.yaml and values.schema.json: every key documented, wrong values refused with a clear message.

Two layers refuse bad values: the JSON schema (types, enums, unknown keys) and the
chart's trtop.validate helper (combinations that cannot work). Both fail `helm template`,
`install` and `upgrade` before anything reaches the cluster.
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.charts.chart import CHART, container_env, one

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Kubernetes objects passed through as they are: their own keys follow the Kubernetes API.
FREE_FORM = {"resources", "podSecurityContext", "securityContext", "podAnnotations", "podLabels",
             "nodeSelector", "affinity", "annotations", "labels", "env"}


def value_paths(values, prefix=""):
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, dict) and key not in FREE_FORM:
            yield from value_paths(value, path + ".")


def schema_paths(schema, prefix=""):
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{key}"
        yield path, sub
        if key not in FREE_FORM:
            yield from schema_paths(sub, path + ".")


def test_schema_and_values_name_the_same_keys():
    in_values = {p for p, _ in value_paths(VALUES)}
    in_schema = {p for p, _ in schema_paths(SCHEMA)} - {"global"}
    assert in_values == in_schema


def test_every_schema_object_refuses_unknown_keys():
    loose = [p for p, sub in schema_paths(SCHEMA)
             if sub.get("properties") and sub.get("additionalProperties") is not False]
    assert SCHEMA["additionalProperties"] is False
    assert loose == []


def test_every_schema_key_is_described():
    assert [p for p, sub in schema_paths(SCHEMA) if not sub.get("description")] == []


def test_every_values_key_has_a_comment_above_it():
    # Leaf keys (those with a value on their line) need a comment line right above them;
    # keys inside a free-form Kubernetes object (resources: requests: ...) do not.
    undocumented, parents = [], []  # parents: (indent, key) of the enclosing blocks
    lines = VALUES_TEXT.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z]\w*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        inside_free_form = any(k in FREE_FORM for _, k in parents)
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if rest and not inside_free_form and not prev.lstrip().startswith("#"):
            undocumented.append(".".join([k for _, k in parents] + [key]))
        parents.append((indent, key))
    assert undocumented == []


# (--set arguments, words the error must contain): the schema's refusals.
SCHEMA_REFUSALS = [
    (["--set", "replicaCount=0"], "/replicaCount"),
    (["--set", "noSuchKey=1"], "additional properties 'noSuchKey' not allowed"),
    (["--set", "store.pvc.sizee=1Gi"], "additional properties 'sizee' not allowed"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "workloads.tensorrtVersion=10"], "/workloads/tensorrtVersion"),
    (["--set", "store.pvc.size=lots"], "/store/pvc/size"),
    (["--set", "store.s3.uri=https://bucket/x"], "/store/s3/uri"),
    (["--set", "store.mountPath=relative/path"], "/store/mountPath"),
    (["--set", "watchNamespaces={Team_A}"], "/watchNamespaces/0"),
    (["--set", "peering.priority=high"], "/peering/priority"),
    (["--set", "metricsPort=80"], "/metricsPort"),
    (["--set", "serviceMonitor.interval=soon"], "/serviceMonitor/interval"),
    (["--set", "workloads.env.BAD-NAME=x"], "/workloads/env"),
    # trtop's own variables: a duplicate comes later in the container's env and wins (an unscoped
    # TRTOP_STORE_URI would give every tenant's workloads the whole store; TRTOP_NAMESPACES would
    # widen a namespaced operator).
    (["--set", "workloads.env.TRTOP_STORE_URI=s3://bucket/engines"], "invalid propertyName 'TRTOP_STORE_URI'"),
    (["--set", "operator.extraEnv[0].name=TRTOP_NAMESPACES"], "/operator/extraEnv/0/name"),
    (["--set", "operator.extraEnv[0].name=TRTOP_ALLOWED_IMAGES"], "/operator/extraEnv/0/name"),
    (["--set", "operator.extraEnv[0].name=POD_ID"], "/operator/extraEnv/0/name"),
]


@pytest.mark.parametrize("args,words", SCHEMA_REFUSALS, ids=[a[1] for a, _ in SCHEMA_REFUSALS])
def test_schema_refuses_wrong_values(render_error, args, words):
    message = render_error(*args)
    assert "values don't meet the specifications of the schema" in message
    assert words in message


S3 = ["--set", "store.pvc.create=false", "--set", "store.s3.uri=s3://bucket/engines"]
# (--set arguments, words of the message that says what to change): trtop.validate's refusals.
CONFLICTS = [
    (["--set", "store.s3.uri=s3://bucket/engines"], "pick one: for S3 also set store.pvc.create=false"),
    (["--set", "store.pvc.existingClaim=engines"], "set store.pvc.create=false to use the existing claim"),
    (["--set", "store.pvc.create=false"], "no engine store; set store.pvc.existingClaim"),
    (["--set", "store.s3.existingSecret=creds"], "store.s3.uri is empty"),
    (["--set", "rbac.namespaced=true"], "rbac.namespaced=true needs watchNamespaces"),
    (["--set", "watchNamespaces={team-a}"], "set rbac.namespaced=true to limit it"),
    (["--set", "peering.enabled=false", "--set", "replicaCount=2"], "replicaCount > 1 needs peering.enabled=true"),
    (["--set", "peering.priority=5", "--set", "replicaCount=2"], "use peering.priority=random"),
    (["--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true"], "enable one"),
    (["--set", "serviceMonitor.enabled=true", "--set", "metricsService.enabled=false"], "needs metricsService.enabled=true"),
    (["--set", "healthPort=8080"], "need their own ports"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name: name the existing ServiceAccount"),
    (["--set-string", "operator.wakeQuery=sum(waiting)"], "set operator.prometheusUrl too"),
]


@pytest.mark.parametrize("args,words", CONFLICTS, ids=[" ".join(a[1::2]) for a, _ in CONFLICTS])
def test_conflicting_values_fail_with_what_to_change(render_error, args, words):
    assert words in render_error(*args)


def test_other_extra_env_renders(render):
    objects = render("--set", "operator.extraEnv[0].name=HTTPS_PROXY", "--set", "operator.extraEnv[0].value=http://p:3128",
                     "--set", "workloads.env.HTTPS_PROXY=http://p:3128")
    env = container_env(one(objects, "Deployment"))
    assert env["HTTPS_PROXY"] == env["TRTOP_WORKLOAD_ENV_HTTPS_PROXY"] == "http://p:3128"


def test_the_two_store_kinds_and_both_modes_render(render):
    assert render(*S3)
    assert render("--set", "store.pvc.create=false", "--set", "store.pvc.existingClaim=engines")
    assert render("--set", "rbac.namespaced=true", "--set", "watchNamespaces={a,b}")
