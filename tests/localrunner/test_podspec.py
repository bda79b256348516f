"""Pod container -> local process: path and address rewriting, env resolution, executables."""
from __future__ import annotations

import json
import sys

import pytest

from trtop_dev.localrunner.podspec import (
    Mount, PodSpecError, Rewriter, build_process, expand_refs, field_value, map_executable, resolve_env,
)

MOUNTS = [Mount("/var/lib/trtop", "/L/trtop"), Mount("/var/lib/trtop/engines", "/L/store"),
          Mount("/mnt/models/claim", "/L/models"), Mount("/tmp", "/L/tmp")]


def pod(**spec: object) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"nodeName": "local-runner", **spec}}


def no_lookup(kind: str, namespace: str, name: str) -> None:
    return None


class TestRewriter:
    rewrite = Rewriter(MOUNTS, "127.0.0.7")

    def test_longest_mount_path_wins(self) -> None:
        assert self.rewrite("/var/lib/trtop/engines/e-1/engine.json") == "/L/store/e-1/engine.json"
        assert self.rewrite("/var/lib/trtop/other") == "/L/trtop/other"

    def test_a_path_equal_to_the_mount(self) -> None:
        assert self.rewrite("/tmp") == "/L/tmp"

    def test_json_inside_a_value_keeps_its_shape(self) -> None:
        request = json.dumps({"store_uri": "/var/lib/trtop/engines", "model": {"uri": "file:///mnt/models/claim/m.keras"}})
        assert json.loads(self.rewrite(request)) == {"store_uri": "/L/store", "model": {"uri": "file:///L/models/m.keras"}}

    def test_only_whole_path_components_at_a_path_start(self) -> None:
        assert self.rewrite("/tmpfoo/x") == "/tmpfoo/x"
        assert self.rewrite("/home/tmp/x") == "/home/tmp/x"
        assert self.rewrite("s3://bucket/tmp/x") == "s3://bucket/tmp/x"

    def test_after_separators(self) -> None:
        assert self.rewrite("--dir=/tmp/a") == "--dir=/L/tmp/a"
        assert self.rewrite("/tmp/a:/tmp/b") == "/L/tmp/a:/L/tmp/b"

    def test_any_address_becomes_the_pod_ip_and_nothing_else_does(self) -> None:
        assert self.rewrite("0.0.0.0") == "127.0.0.7"
        assert self.rewrite("http://0.0.0.0:8081/healthz") == "http://127.0.0.7:8081/healthz"
        assert self.rewrite("10.0.0.0 0.0.0.01 0.0.0.0.1") == "10.0.0.0 0.0.0.01 0.0.0.0.1"

    def test_path_maps_container_paths_under_a_mount(self) -> None:
        assert self.rewrite.path("/tmp/work") == "/L/tmp/work"
        assert self.rewrite.path("/etc") is None

    def test_a_root_mount_is_ignored(self) -> None:
        assert Rewriter([Mount("/", "/L/root")], "127.0.0.2")("/etc/x") == "/etc/x"


def test_expand_refs_follows_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_refs("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_map_executable() -> None:
    assert map_executable(["trtop", "serve", "--port", "1"]) == [sys.executable, "-m", "trtop.cli", "serve", "--port", "1"]
    assert map_executable(["python3", "-c", "x"]) == [sys.executable, "-c", "x"]
    assert map_executable(["/usr/bin/python", "-V"]) == [sys.executable, "-V"]
    assert map_executable(["sh", "-c", "true"]) == ["sh", "-c", "true"]


def test_field_values() -> None:
    p = pod()
    assert field_value(p, "metadata.name", "127.0.0.3", "127.0.0.1") == "p"
    assert field_value(p, "status.podIP", "127.0.0.3", "127.0.0.1") == "127.0.0.3"
    assert field_value(p, "metadata.labels['app']", "", "") == "x"
    with pytest.raises(PodSpecError, match="not supported"):
        field_value(p, "spec.whatever", "", "")


class TestResolveEnv:
    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        data = {("ConfigMap", "cfg"): {"FROM_CM": "/tmp/cm", "SHARED": "cm"},
                ("Secret", "sec"): {"token": "s3cr3t", "SHARED": "secret"}}
        assert namespace == "ns"
        return data.get((kind, name))

    def test_env_from_first_then_env_in_order_with_refs_and_rewrites(self) -> None:
        container = {"envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}, "prefix": "S_"}],
                     "env": [{"name": "SHARED", "value": "literal"},
                             {"name": "DIR", "value": "/tmp/d"},
                             {"name": "BOTH", "value": "$(DIR)/x at 0.0.0.0"},
                             {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                             {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}}]}
        env = resolve_env(pod(), container, Rewriter(MOUNTS, "127.0.0.9"), "127.0.0.1", self.lookup)
        assert env == {"FROM_CM": "/L/tmp/cm", "SHARED": "literal", "S_token": "s3cr3t", "S_SHARED": "secret",
                       "DIR": "/L/tmp/d", "BOTH": "/L/tmp/d/x at 127.0.0.9", "NAME": "p", "IP": "127.0.0.9",
                       "TOKEN": "s3cr3t"}

    def test_missing_sources_fail_unless_optional(self) -> None:
        rewrite = Rewriter([], "127.0.0.2")
        with pytest.raises(PodSpecError, match="secret 'nope' not found") as err:
            resolve_env(pod(), {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]},
                        rewrite, "127.0.0.1", self.lookup)
        assert err.value.reason == "CreateContainerConfigError"
        optional = {"envFrom": [{"configMapRef": {"name": "nope", "optional": True}}],
                    "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": True}}}]}
        assert resolve_env(pod(), optional, rewrite, "127.0.0.1", self.lookup) == {}


class TestBuildProcess:
    def build(self, container: dict) -> object:
        return build_process(pod(), {"name": "c", **container}, rewrite=Rewriter(MOUNTS, "127.0.0.4"),
                             host_ip="127.0.0.1", base_env={"PATH": "/bin", "HOME": "/h", "TMPDIR": "/base"},
                             forced_env={"KUBECONFIG": "/k", "TMPDIR": "/forced"}, default_cwd="/cwd", lookup=no_lookup)

    def test_a_serving_container(self) -> None:
        spec = self.build({"command": ["trtop", "serve", "--host", "0.0.0.0", "--port", "8000"],
                           "env": [{"name": "TRTOP_STORE_URI", "value": "/var/lib/trtop/engines"},
                                   {"name": "KUBECONFIG", "value": "/in/pod"}]})
        assert spec.argv == (sys.executable, "-m", "trtop.cli", "serve", "--host", "127.0.0.4", "--port", "8000")
        assert spec.env == {"PATH": "/bin", "HOME": "/h", "TMPDIR": "/forced", "TRTOP_STORE_URI": "/L/store",
                            "KUBECONFIG": "/k"}
        assert spec.cwd == "/cwd"

    def test_args_are_rewritten_before_refs_are_expanded(self) -> None:
        spec = self.build({"command": ["sh", "-c"], "args": ["ls /tmp $(D)"], "workingDir": "/tmp/w",
                           "env": [{"name": "D", "value": "/tmp/d"}, {"name": "TMPDIR", "value": "/tmp/t"}]})
        assert spec.argv == ("sh", "-c", "ls /L/tmp /L/tmp/d")
        assert spec.cwd == "/L/tmp/w"
        assert spec.env["TMPDIR"] == "/L/tmp/t"  # the pod's own TMPDIR wins

    def test_no_command_is_a_clear_failure(self) -> None:
        with pytest.raises(PodSpecError, match="cannot read an image's entrypoint") as err:
            self.build({"image": "nginx", "args": ["x"]})
        assert err.value.reason == "NoCommand"
