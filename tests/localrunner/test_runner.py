"""The local runner against the real dev cluster: pods, Jobs and Deployments really run.

Each test puts its pods on the session runner's node (``local_runner`` in conftest.py) and
asserts on what the API says (phase, exit codes, termination messages, readiness, pod IPs)
and on what the processes did (files, HTTP answers, signals, ps).
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from trtop import names
from trtop_dev.devcluster.testing import DevCluster, wait_for
from trtop_dev.localrunner import LocalRunner, NodeShape
from tests.localrunner.conftest import TEST_TAINT

PY = "python"  # the runner maps it to its own interpreter


def pod_status(dev_cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    return dev_cluster.get("pod", name, "-n", namespace).get("status", {})


def pods(dev_cluster: DevCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return dev_cluster.get("pods", "-n", namespace, "-l", selector)["items"]


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def bare_pod(name: str, node: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11-slim", "command": command}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [container], **spec}}


def alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def test_the_node_is_ready_with_a_fresh_lease(dev_cluster: DevCluster, local_runner: LocalRunner) -> None:
    node = dev_cluster.get("node", local_runner.node_name)
    assert node["metadata"]["labels"][names.LABEL_LOCAL_RUNNER] == "true"
    assert names.KWOK_NODE_ANNOTATION not in node["metadata"].get("annotations", {})
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not [t for t in node["spec"].get("taints", []) if t["key"].startswith("node.kubernetes.io/")]
    lease = dev_cluster.get("lease", local_runner.node_name, "-n", "kube-node-lease")
    renewed = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    assert lease["spec"]["holderIdentity"] == local_runner.node_name
    assert dt.datetime.now(dt.timezone.utc) - renewed < dt.timedelta(seconds=30)


def test_a_pod_succeeds_with_its_termination_message(dev_cluster: DevCluster, namespace: str,
                                                     local_runner: LocalRunner) -> None:
    script = ("import os; print('hello from', os.environ['HOSTNAME']); "
              "open(os.environ['TRTOP_TERMINATION_LOG'], 'w').write('{\"ok\": true}')")
    dev_cluster.apply(bare_pod("hello", local_runner.node_name, [PY, "-c", script]), namespace=namespace)
    status = wait_for("pod hello Succeeded", lambda: (s := pod_status(dev_cluster, namespace, "hello"))
                      .get("phase") in ("Succeeded", "Failed") and s)
    assert status["phase"] == "Succeeded"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (0, "Completed", '{"ok": true}')
    assert status["podIP"].startswith("127.0.") and status["hostIP"] == "127.0.0.1"
    assert "hello from hello" in local_runner.log_path(namespace, "hello").read_text()


def test_a_job_whose_pod_exits_3_fails(dev_cluster: DevCluster, namespace: str, local_runner: LocalRunner) -> None:
    script = "import sys; print('about to fail', flush=True); sys.exit(3)"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "three"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never", **local_runner.placement(),
               "containers": [{"name": "main", "image": "python:3.11-slim", "command": [PY, "-c", script],
                               "terminationMessagePolicy": "FallbackToLogsOnError"}]}}}}
    dev_cluster.apply(job, namespace=namespace)

    def failed() -> bool:
        conditions = dev_cluster.get("job", "three", "-n", namespace).get("status", {}).get("conditions", [])
        return any(c["type"] == "Failed" and c["status"] == "True" for c in conditions)

    wait_for("Job three Failed", failed, timeout=60)
    (pod,) = pods(dev_cluster, namespace, "job-name=three")
    assert pod["spec"]["nodeName"] == local_runner.node_name
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert "about to fail" in terminated["message"]  # FallbackToLogsOnError: the log tail


SERVER = ("import http.server as h, signal, sys\n"
          "def bye(*_):\n"
          "    print('got SIGTERM', flush=True)\n"
          "    sys.exit(0)\n"
          "signal.signal(signal.SIGTERM, bye)\n"
          "print('serving on', sys.argv[1], flush=True)\n"
          "h.ThreadingHTTPServer((sys.argv[1], 18080), h.SimpleHTTPRequestHandler).serve_forever()\n")


def test_deployment_replicas_get_their_own_ips_and_scale_down_with_sigterm(
        dev_cluster: DevCluster, namespace: str, local_runner: LocalRunner) -> None:
    labels = {"app": "web"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                  "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
                      "metadata": {"labels": labels},
                      "spec": {**local_runner.placement(), "terminationGracePeriodSeconds": 10, "containers": [{
                          "name": "web", "image": "python:3.11-slim", "command": [PY, "-c", SERVER, "0.0.0.0"],
                          "ports": [{"name": "http", "containerPort": 18080}],
                          "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}]}}}}
    dev_cluster.apply(deployment, namespace=namespace)
    ready = wait_for("2 Ready replicas", lambda: (ps := pods(dev_cluster, namespace, "app=web"))
                     and len(ps) == 2 and all(is_ready(p) for p in ps) and ps, timeout=60)
    ips = sorted(p["status"]["podIP"] for p in ready)
    assert len(set(ips)) == 2 and all(ip.startswith("127.0.") and ip != "127.0.0.1" for ip in ips)
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:18080/", timeout=5) as answer:
            assert answer.status == 200

    dev_cluster.kubectl("scale", "deployment/web", "--replicas=1", "-n", namespace)
    wait_for("one pod left", lambda: len(pods(dev_cluster, namespace, "app=web")) == 1, timeout=60)
    (kept,) = pods(dev_cluster, namespace, "app=web")
    (gone,) = [p for p in ready if p["metadata"]["name"] != kept["metadata"]["name"]]
    log = local_runner.log_path(namespace, gone["metadata"]["name"]).read_text()
    assert "got SIGTERM" in log
    with urllib.request.urlopen(f"http://{kept['status']['podIP']}:18080/", timeout=5) as answer:
        assert answer.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{gone['status']['podIP']}:18080/", timeout=2)


WHAT_I_SEE = """
import json, os, sys
seen = {"argv": sys.argv[1:], "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("REQUEST", "SCRATCH", "POD_NAME", "POD_IP", "TOKEN", "FROM_CM",
                                               "KUBECONFIG", "PYTHONUNBUFFERED", "TMPDIR", "HOME")},
        "config": open(os.path.join(sys.argv[2], "greeting")).read()}
open(os.path.join(os.environ["SCRATCH"], "note"), "w").write("scratch works")
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
"""


def test_env_and_volumes_are_mapped_to_local_paths(dev_cluster: DevCluster, namespace: str,
                                                   local_runner: LocalRunner) -> None:
    dev_cluster.apply([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"greeting": "hi", "FROM_CM": "/data/from-cm"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "stringData": {"token": "s3cr3t"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    ], namespace=namespace)
    request = json.dumps({"store_uri": "/data/engines", "model": {"uri": "file:///data/models/m.keras"}})
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}}],
        "env": [{"name": "REQUEST", "value": request}, {"name": "SCRATCH", "value": "/scratch"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "scratch", "mountPath": "/scratch"},
                         {"name": "config", "mountPath": "/etc/config"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
               {"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
               {"name": "config", "configMap": {"name": "cfg"}}]
    pod = bare_pod("seer", local_runner.node_name, [PY, "-c", WHAT_I_SEE, "/data/seen.json", "/etc/config", "0.0.0.0"],
                   container=container, volumes=volumes)
    dev_cluster.apply(pod, namespace=namespace)
    status = wait_for("pod seer ends", lambda: (s := pod_status(dev_cluster, namespace, "seer"))
                      .get("phase") in ("Succeeded", "Failed") and s)
    claim_dir = local_runner.pvc_root / namespace / "claim"  # unbound claim: the runner's own folder
    assert status["phase"] == "Succeeded", local_runner.log_path(namespace, "seer").read_text()
    seen = json.loads((claim_dir / "seen.json").read_text())
    pod_ip = status["podIP"]
    assert seen["argv"][0::2] == [str(claim_dir / "seen.json"), pod_ip]
    assert seen["argv"][1].endswith("/volumes/config")
    assert seen["config"] == "hi"
    env = seen["env"]
    assert json.loads(env["REQUEST"]) == {"store_uri": f"{claim_dir}/engines",
                                          "model": {"uri": f"file://{claim_dir}/models/m.keras"}}
    assert env["FROM_CM"] == f"{claim_dir}/from-cm"
    assert (env["POD_NAME"], env["POD_IP"], env["TOKEN"]) == ("seer", pod_ip, "s3cr3t")
    assert env["KUBECONFIG"] == str(Path(dev_cluster.kubeconfig).resolve()) and env["PYTHONUNBUFFERED"] == "1"
    assert env["TMPDIR"].endswith("/volumes/tmp") and env["SCRATCH"].endswith("/volumes/scratch")
    assert Path(seen["cwd"]).is_relative_to(local_runner.work_dir)
    # emptyDir folders live with the pod: gone once it is deleted.
    scratch = Path(env["SCRATCH"])
    dev_cluster.kubectl("delete", "pod", "seer", "-n", namespace, "--timeout=30s")
    wait_for("the pod's folders removed", lambda: not scratch.exists(), timeout=10)
    assert (claim_dir / "seen.json").exists()  # a claim outlives its pods


def test_a_pod_that_cannot_run_fails_with_a_reason(dev_cluster: DevCluster, namespace: str,
                                                   local_runner: LocalRunner) -> None:
    no_command = bare_pod("nocmd", local_runner.node_name, [])
    del no_command["spec"]["containers"][0]["command"]
    odd_volume = bare_pod("oddvol", local_runner.node_name, [PY, "-c", "pass"],
                          volumes=[{"name": "v", "nfs": {"server": "192.0.2.1", "path": "/exports"}}])
    no_binary = bare_pod("nobin", local_runner.node_name, ["no-such-program-here", "--flag"])
    dev_cluster.apply([no_command, odd_volume, no_binary], namespace=namespace)
    for name, reason in (("nocmd", "NoCommand"), ("oddvol", "UnsupportedVolume"), ("nobin", "StartError")):
        status = wait_for(f"pod {name} Failed", lambda: (s := pod_status(dev_cluster, namespace, name))
                          .get("phase") == "Failed" and s)
        terminated = status["containerStatuses"][0]["state"]["terminated"]
        assert terminated["reason"] == reason
        if reason == "StartError":  # the process could not start: a container's failure, not the pod's
            assert terminated["exitCode"] == 128 and "no-such-program-here" in terminated["message"]
        else:
            assert status["reason"] == reason


def test_stop_leaves_no_process_behind_and_removes_the_node(dev_cluster: DevCluster, namespace: str,
                                                            tmp_path: Path) -> None:
    marker = f"lr-stray-{secrets.token_hex(4)}"
    script = ("import subprocess, sys, time\n"
              f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'])\n"
              "print('child', child.pid, flush=True)\n"
              "time.sleep(600)\n")
    runner = LocalRunner(dev_cluster.kubeconfig, node_name=f"local-runner-{secrets.token_hex(3)}",
                         work_dir=tmp_path / "work", shape=NodeShape(taints=[TEST_TAINT]))
    with runner:
        dev_cluster.apply(bare_pod("sleeper", runner.node_name, [PY, "-c", script, marker],
                                   restartPolicy="Always"), namespace=namespace)
        wait_for("pod sleeper Ready", lambda: is_ready(dev_cluster.get("pod", "sleeper", "-n", namespace)))
        log = runner.log_path(namespace, "sleeper")
        wait_for("the child started", lambda: "child " in log.read_text())
        child = int(log.read_text().split("child ")[1].split()[0])
        (main,) = runner.pids()
        assert alive(main) and alive(child)
    assert not alive(main) and not alive(child)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert marker not in ps
    assert dev_cluster.kubectl("get", "node", runner.node_name, check=False).returncode != 0


def test_always_restarts_with_back_off_and_a_failing_liveness_probe_restarts(
        dev_cluster: DevCluster, namespace: str, local_runner: LocalRunner) -> None:
    crasher = bare_pod("crasher", local_runner.node_name, [PY, "-c", "import sys; print('crash'); sys.exit(1)"],
                       restartPolicy="Always")
    unhealthy = bare_pod("unhealthy", local_runner.node_name, [PY, "-c", "import time; time.sleep(600)"],
                         restartPolicy="Always", terminationGracePeriodSeconds=1,
                         container={"livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1,
                                                      "failureThreshold": 2}})
    dev_cluster.apply([crasher, unhealthy], namespace=namespace)

    def restarted(name: str) -> dict[str, Any] | None:
        statuses = pod_status(dev_cluster, namespace, name).get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 1 and statuses[0].get("lastState", {}).get(
            "terminated") else None

    crashed = wait_for("crasher restarted", lambda: restarted("crasher"), timeout=30)
    assert crashed["lastState"]["terminated"]["exitCode"] == 1
    assert pod_status(dev_cluster, namespace, "crasher")["phase"] == "Running"
    killed = wait_for("unhealthy restarted", lambda: restarted("unhealthy"), timeout=30)
    assert killed["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM
    assert "liveness probe failed" in killed["lastState"]["terminated"]["message"]


def test_a_broken_watch_is_resumed(dev_cluster: DevCluster, namespace: str, local_runner: LocalRunner) -> None:
    assert local_runner._kube is not None
    local_runner._kube.interrupt_watches(final=False)  # as if the API server dropped the stream
    dev_cluster.apply(bare_pod("after-break", local_runner.node_name, [PY, "-c", "print('still here')"]),
                      namespace=namespace)
    wait_for("pod after-break Succeeded",
             lambda: pod_status(dev_cluster, namespace, "after-break").get("phase") == "Succeeded", timeout=30)
