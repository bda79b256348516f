"""Checks for fields the schema admits but that cannot work, and for the object's name.

Called by ``trtop.api.spec.parse_spec`` (spec fields) and by the planner
(``check_name``); the CRD carries the same rules as CEL/patterns so the API server refuses
them first (crds/modeldeployment.yaml). Each check raises ``SpecError`` naming the field
and what to write instead; none of them raises anything else whatever a tenant wrote.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from trtop import names
from trtop.api.errors import SpecError

# The Service and the Deployment take the ModelDeployment's name, and so does a label value:
# a DNS-1035 label (RFC 1035: lower case, digits, '-', starting with a letter) of <= 63 chars.
NAME_MAX = 63
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CONTAINER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label
# Kubernetes resource quantities (k8s.io/apimachinery/pkg/api/resource), e.g. 500m, 2Gi, 1e3.
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
RESOURCE_SECTIONS = ("limits", "requests")
# "25%" or "1": a rollout bound (the Deployment controller's intstr).
_INT_OR_PERCENT = re.compile(r"^[0-9]{1,9}%?$")
# Environment names trtop sets itself on the server container: a tenant's value would break it.
RESERVED_ENV_PREFIX = "TRTOP_"
# Labels that select trtop's pods, or that the Job / Deployment controllers set and select on.
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "trtop.io/", "batch.kubernetes.io/")
RESERVED_LABELS = ("job-name", "controller-uid", "pod-template-hash")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def check_name(name: object) -> str:
    """The ModelDeployment's name, if it can name its Service, Deployment and labels."""
    text = str(name or "")
    if len(text) > NAME_MAX or not _NAME.match(text):
        raise SpecError(
            "metadata.name",
            f"{text[:80]!r} cannot name the Service and Deployment trtop makes: use at most {NAME_MAX} "
            "lower-case letters, digits and '-', starting with a letter (no dots)")
    return text


def check_resources(raw: object, where: str = "serving.resources") -> dict[str, Any]:
    """``serving.resources`` (or a sidecar's): limits/requests of valid quantities (a typo would be refused
    at apply)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(where, f"must be an object with limits/requests, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in RESOURCE_SECTIONS:
            raise SpecError(f"{where}.{section}", "is not one of limits, requests")
        if not isinstance(values, Mapping):
            raise SpecError(f"{where}.{section}", "must map resource names to quantities")
        for resource, qty in values.items():
            if isinstance(qty, bool) or not _QUANTITY.match(str(qty)):
                raise SpecError(f"{where}.{section}.{resource}",
                                f"{str(qty)[:40]!r} is not a quantity (e.g. 500m, 2, 4Gi)")
        out[str(section)] = {str(k): str(v) for k, v in values.items()}
    return out


def check_gpus(resources: Mapping[str, Mapping[str, str]], where: str, *, allowed: str | None) -> None:
    """trtop gives each serving pod exactly one GPU (names.GPU_RESOURCE): its server runs one engine on one GPU, and
    placement counts the pods a node's free GPUs hold one GPU each. The serving container may say "1" (what trtop
    sets anyway, ``allowed``); a sidecar none. Anything else was silently replaced, or miscounted: refused."""
    for section, values in resources.items():
        value = values.get(names.GPU_RESOURCE)
        if value is not None and value != allowed:
            raise SpecError(f"{where}.{section}.{names.GPU_RESOURCE}", (
                f"is {value!r}, but trtop gives each serving pod one GPU (its server runs one engine on one GPU): "
                + ("leave it out or set 1, and scale with replicas" if allowed else
                   "a sidecar cannot take one; leave it out")))


def check_rollout_bound(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if isinstance(value, bool) or not _INT_OR_PERCENT.match(str(value)):
        raise SpecError(f"rollout.{key}", f"{str(value)[:40]!r} is neither a whole number nor a percentage like 25%")
    return str(value)


def check_rollout(max_surge: str, max_unavailable: str) -> None:
    if _is_zero(max_surge) and _is_zero(max_unavailable):
        raise SpecError("rollout", "maxSurge and maxUnavailable cannot both be 0: no pod could ever be replaced; "
                                   "set maxSurge to 1 or 25%")


def _is_zero(value: str) -> bool:
    return value.rstrip("%").lstrip("0") == ""


def check_env(raw: object, where: str = "serving.env") -> tuple[Mapping[str, Any], ...]:
    """``serving.env`` (or a sidecar's): a list of {name, value|valueFrom}; trtop's own variables cannot be
    overridden."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise SpecError(where, "must be a list of {name, value} objects")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            raise SpecError(f"{where}[{i}]", "must be an object with a name")
        if item["name"].startswith(RESERVED_ENV_PREFIX):
            raise SpecError(f"{where}[{i}].name",
                            f"{item['name']!r}: variables starting with {RESERVED_ENV_PREFIX} are set by trtop "
                            "(engine set, store, model name); pick another name")
        if "value" in item and not isinstance(item["value"], str):
            raise SpecError(f"{where}[{i}].value", f"must be a string (quote numbers and booleans), "
                                                   f"got {type(item['value']).__name__}")
        out.append(item)
    return tuple(out)


def check_container_name(raw: object, where: str, taken: Sequence[str]) -> str:
    """A sidecar's container name: a DNS-1123 label, not the server's and not another sidecar's."""
    name = str(raw or "")
    if len(name) > NAME_MAX or not _CONTAINER_NAME.match(name):
        raise SpecError(where, f"{name[:80]!r} is not a container name: at most {NAME_MAX} lower-case letters, "
                               "digits and '-', starting and ending with a letter or digit")
    if name == names.SERVER_CONTAINER or name in taken:
        raise SpecError(where, f"{name!r} is taken (by the server container or another sidecar); pick another")
    return name


def check_strings(raw: object, where: str) -> tuple[str, ...]:
    """A list of strings (a container's command or args)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not all(isinstance(i, str) for i in raw):
        raise SpecError(where, "must be a list of strings")
    return tuple(raw)


def check_plain_env(raw: object, where: str) -> tuple[dict[str, str], ...]:
    """A sidecar's variables: ``check_env``'s rules, and {name, value} only. A value from a Secret or the pod
    (valueFrom) is refused: the pod runs under the platform's service account, beside the store's credentials."""
    out = []
    for i, item in enumerate(check_env(raw, where)):
        if set(item) - {"name", "value"}:
            raise SpecError(f"{where}[{i}]", f"only name and value are allowed, got {sorted(set(item))}")
        out.append({"name": item["name"], "value": str(item.get("value", ""))})
    return tuple(out)


def check_container_ports(raw: object, where: str, taken: set[int]) -> tuple[dict[str, Any], ...]:
    """A sidecar's ports: {containerPort, name?, protocol?}, none the server's or another sidecar's."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise SpecError(where, "must be a list of {containerPort, name, protocol} objects")
    out = []
    for i, item in enumerate(raw):
        port = item.get("containerPort") if isinstance(item, Mapping) else None
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SpecError(f"{where}[{i}].containerPort", f"must be a port number 1-65535, got {port!r}")
        if port in taken:
            raise SpecError(f"{where}[{i}].containerPort", f"{port} is the server's or another sidecar's port")
        taken = taken | {port}
        entry: dict[str, Any] = {"containerPort": port, "protocol": str(item.get("protocol") or "TCP")}
        if item.get("name"):
            entry["name"] = str(item["name"])
        out.append(entry)
    return tuple(out)


def check_objects(raw: object, where: str) -> tuple[Mapping[str, Any], ...]:
    """A list of objects (tolerations)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not all(isinstance(i, Mapping) for i in raw):
        raise SpecError(where, "must be a list of objects")
    return tuple(raw)


def check_string_map(raw: object, where: str, *, labels: bool = False) -> dict[str, str]:
    """A string -> string map (nodeSelector, pod labels/annotations); labels keep off reserved keys."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(where, f"must be an object of strings, got {type(raw).__name__}")
    out = {str(k): str(v) for k, v in raw.items()}
    if labels:
        reserved = sorted(k for k in out if k in RESERVED_LABELS or k.startswith(RESERVED_LABEL_PREFIXES))
        if reserved:
            raise SpecError(where, f"labels {reserved} are set by trtop or by the Job/Deployment controllers "
                                   "(they select the pods); pick other keys")
        bad = [k for k, v in out.items() if not LABEL_KEY.match(k) or not LABEL_VALUE.match(v)]
        if bad:
            raise SpecError(where, f"{bad[0][:80]!r} is not a valid label key/value (63 characters of "
                                   "[A-Za-z0-9_.-], starting and ending alphanumeric)")
    return out
