"""The control plane at fleet scale: the real operator against N ModelDeployments.

    .venv/bin/python bench/controlplane.py --n 100 [--n 300 ...] [--gpu-nodes 200] [--keep]

Brings up a dev cluster (``trtop-bench``; or the cluster of $KUBECONFIG) with
``--gpu-nodes`` fake GPU nodes over four GPU types, and for each N:

1. the floor: the same build Jobs, Deployments and Services the operator would make
   (planned by trtop's own planner) created directly, 4 at a time, until every Job has
   completed and every Deployment is available;
2. the real operator (default settings, its own ServiceAccount) with a watch-based
   converter stand-in that publishes an engine as soon as a build Job appears; N
   ModelDeployments over N/2 models applied at once: seconds to first/all Ready, API
   requests and writes per ModelDeployment counted by the API server (two FlowSchemas
   match the operator's ServiceAccount: writes and reads), writes per minute at rest over
   2 minutes, build Jobs vs distinct engine keys, RSS, reconcile latency p50/p99;
3. a node of a fifth GPU type joins: seconds until its build Jobs exist, and how many
   reconciles ran meanwhile.

Prints one table row per N (Markdown). Not a test: nothing here runs in CI. The dev
cluster's Service range is a /16 (devcluster/kwokctl.yaml), room for N=1000.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.operator_harness import free_port, publish_fake_engine  # noqa: E402
from trtop import names  # noqa: E402
from trtop.api.engine import EngineRequest  # noqa: E402
from trtop.config import Settings  # noqa: E402
from trtop_dev.devcluster import testing  # noqa: E402
from trtop_dev.devcluster.pools import Gpu, Pool, build_node  # noqa: E402
from trtop.k8s.observe import node_fact  # noqa: E402
from trtop.planning.facts import ClusterFacts  # noqa: E402
from trtop.planning.plan import plan_model_deployment  # noqa: E402

TYPES = [("h100", "NVIDIA-H100-80GB-HBM3", "9.0"), ("a100", "NVIDIA-A100-SXM4-80GB", "8.0"),
         ("l4", "NVIDIA-L4", "8.9"), ("t4", "Tesla-T4", "7.5")]
NEW_TYPE = ("a10g", "NVIDIA-A10G", "8.6")
SA, SA_NS = "trtop-operator", "trtop-bench-system"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def md_spec(model: int) -> dict[str, Any]:
    return {"model": {"uri": f"s3://models/m{model}", "format": "onnx"},
            "engine": {"batch": {"min": 1, "opt": 4, "max": 16}, "backoffLimit": 0},
            "scaling": {"mode": "none"}, "replicas": 1}


def md_body(i: int, ns: str) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": f"md-{i}", "namespace": ns, "uid": f"00000000-0000-0000-0000-{i:012d}"},
            "spec": md_spec(i // 2)}


class Cluster:
    def __init__(self, session: testing.DevCluster) -> None:
        self.session = session
        self.api = config.new_client_from_config(config_file=session.kubeconfig)
        self.core, self.apps = client.CoreV1Api(self.api), client.AppsV1Api(self.api)
        self.batch, self.custom = client.BatchV1Api(self.api), client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return str(self.session.kubectl(*args, input=input, timeout=600))

    def apply_file(self, docs: list[dict[str, Any]]) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(docs, f)
        self.kubectl("apply", "--server-side", "-f", f.name)
        os.unlink(f.name)

    def nodes(self, gpu_nodes: int, gpus_per_node: int = 8) -> None:
        per = gpu_nodes // len(TYPES)
        pools = [Pool(name=n, count=per, cpu="96", memory="1Ti",
                      gpu=Gpu(product=p, compute_capability=cc, count=gpus_per_node)) for n, p, cc in TYPES]
        self.session.apply_pools(pools)

    def namespace(self, name: str) -> None:
        self.kubectl("create", "namespace", name)
        testing.wait_for(f"default ServiceAccount in {name}",
                         lambda: self.core.list_namespaced_service_account(name).items, timeout=60)

    def apiserver_counts(self) -> dict[str, float]:
        """apiserver_flowcontrol_dispatched_requests_total by flow schema (the API server's own count)."""
        text = self.kubectl("get", "--raw", "/metrics")
        out: dict[str, float] = {}
        for m in re.finditer(r'^apiserver_flowcontrol_dispatched_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
            schema = re.search(r'flow_schema="([^"]*)"', m.group(1))
            if schema:
                out[schema.group(1)] = out.get(schema.group(1), 0.0) + float(m.group(2))
        return out


def operator_identity(c: Cluster) -> str:
    """A ServiceAccount for the operator, FlowSchemas that count its writes and reads, a kubeconfig."""
    c.kubectl("create", "namespace", SA_NS)
    c.kubectl("create", "serviceaccount", SA, "-n", SA_NS)
    c.kubectl("create", "clusterrolebinding", "trtop-bench-operator", "--clusterrole=cluster-admin",
              f"--serviceaccount={SA_NS}:{SA}")
    subject = {"kind": "ServiceAccount", "serviceAccount": {"name": SA, "namespace": SA_NS}}
    every = {"apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": True}
    schemas = []
    for name, precedence, verbs in (("trtop-writes", 90, ["create", "update", "patch", "delete", "deletecollection"]),
                                    ("trtop-reads", 91, ["*"])):
        schemas.append({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                        "metadata": {"name": name},
                        "spec": {"priorityLevelConfiguration": {"name": "workload-high"},
                                 "matchingPrecedence": precedence,
                                 "distinguisherMethod": {"type": "ByUser"},
                                 "rules": [{"subjects": [subject], "resourceRules": [{**every, "verbs": verbs}],
                                            "nonResourceRules": [{"verbs": verbs, "nonResourceURLs": ["*"]}]}]}})
    c.apply_file(schemas)
    token = c.kubectl("create", "token", SA, "-n", SA_NS, "--duration=10h").strip()
    admin = yaml.safe_load(Path(c.session.kubeconfig).read_text())
    cluster_entry = admin["clusters"][0]
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster_entry],
                  "users": [{"name": SA, "user": {"token": token}}],
                  "contexts": [{"name": SA, "context": {"cluster": cluster_entry["name"], "user": SA}}],
                  "current-context": SA}
    path = Path(tempfile.mkdtemp(prefix="trtop-bench-")) / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    return str(path)


def planned_objects(c: Cluster, n: int, ns: str, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Jobs, Deployments + Services) trtop would make for the N objects, from its own planner."""
    nodes = tuple(node_fact(c.api.sanitize_for_serialization(x), 0) for x in c.core.list_node().items)
    jobs: dict[str, dict[str, Any]] = {}
    serving: list[dict[str, Any]] = []
    from tests.planning.conftest import record_for
    for i in range(n):
        body = md_body(i, ns)
        first = plan_model_deployment(body, ClusterFacts(nodes=nodes), settings, now="2026-01-01T00:00:00Z")
        for job in first.jobs_to_create:
            jobs.setdefault(job["metadata"]["name"], job)
        records = {e.key: record_for(e) for e in first.engines}
        served = plan_model_deployment(body, ClusterFacts(nodes=nodes, records=records), settings,
                                       now="2026-01-01T00:00:00Z")
        serving += [m for m in (served.service, *served.units) if m is not None]
        nodes = _holding(nodes, served.units)  # the next object sees these GPUs taken, as the operator does
    for m in [*jobs.values(), *serving]:
        m["metadata"].pop("ownerReferences", None)
    return list(jobs.values()), serving


def _holding(nodes: tuple[Any, ...], units: tuple[dict[str, Any], ...]) -> tuple[Any, ...]:
    """``nodes`` with the GPUs of the units' pods requested (first nodes of each unit's target first)."""
    from dataclasses import replace

    from trtop.api.targets import gpu_target_of_node
    left = {u["metadata"]["labels"][names.LABEL_TARGET]: int(u["spec"]["replicas"]) for u in units}
    out = []
    for n in nodes:
        target = gpu_target_of_node(n.labels, with_product=True)
        take = min(left.get(target.slug, 0), n.gpu_allocatable - n.gpu_requested) if target else 0
        if take > 0:
            left[target.slug] -= take
            n = replace(n, gpu_requested=n.gpu_requested + take)
        out.append(n)
    return tuple(out)


def floor(c: Cluster, n: int, settings: Settings, keep: bool = False) -> float:
    ns = f"floor-{n}"
    c.namespace(ns)
    jobs, serving = planned_objects(c, n, ns, settings)
    log(f"floor: creating {len(jobs)} Jobs and {len(serving)} Deployments/Services in {ns}")
    started = time.monotonic()

    def create(m: dict[str, Any]) -> None:
        if m["kind"] == "Job":
            # Kept once finished: done() counts them, and at N=1000 the floor outlasts the TTL.
            m["spec"].pop("ttlSecondsAfterFinished", None)
            c.batch.create_namespaced_job(ns, m)
        elif m["kind"] == "Deployment":
            c.apps.create_namespaced_deployment(ns, m)
        else:
            c.core.create_namespaced_service(ns, m)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(create, [*jobs, *serving]))

    def done() -> bool:
        js = c.batch.list_namespaced_job(ns).items
        ds = c.apps.list_namespaced_deployment(ns).items
        return (sum(1 for j in js if (j.status.succeeded or 0) > 0) == len(jobs)
                and sum(1 for d in ds if (d.status.available_replicas or 0) >= 1) >= n)
    testing.wait_for("floor objects ready", done, timeout=3600, interval=2)
    took = time.monotonic() - started
    if not keep:  # its pods hold GPUs the operator's phase needs (N=1000: 2000 pods on 1600 GPUs)
        c.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=1200s")
    return took


class StandIn(threading.Thread):
    """The converter's part: publish an engine the moment a build Job appears (one watch stream)."""

    def __init__(self, c: Cluster, ns: str, store: Path) -> None:
        super().__init__(daemon=True)
        self.c, self.ns, self.store = c, ns, store
        self.stopped = threading.Event()

    def run(self) -> None:
        selector = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"
        while not self.stopped.is_set():
            try:
                for ev in watch.Watch().stream(self.c.batch.list_namespaced_job, self.ns, label_selector=selector,
                                               timeout_seconds=60):
                    ann = ev["raw_object"]["metadata"].get("annotations") or {}
                    if ev["type"] == "ADDED" and names.ANNOTATION_ENGINE_REQUEST in ann:
                        publish_fake_engine(self.store, EngineRequest.from_json(ann[names.ANNOTATION_ENGINE_REQUEST]))
                    if self.stopped.is_set():
                        return
            except Exception:  # noqa: BLE001 - reconnect
                time.sleep(0.5)


def wait_until(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}: {last!r}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in re.finditer(rf'^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$', text, re.M):
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def quantile(text: str, q: float) -> float:
    buckets = sorted((float("inf") if le == "+Inf" else float(le), float(v)) for le, v in re.findall(
        r'^trtop_operator_reconcile_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', text, re.M))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    goal = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= goal)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_operator(c: Cluster, n: int, kubeconfig: str, result: dict[str, Any], new_type_timeout: float) -> None:
    ns = f"bench-{n}"
    c.namespace(ns)
    store = Path(tempfile.mkdtemp(prefix="trtop-bench-store-"))
    stand_in = StandIn(c, ns, store)
    stand_in.start()
    port, health = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": kubeconfig, "TRTOP_NAMESPACES": ns, "TRTOP_STORE_URI": str(store),
           "TRTOP_METRICS_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    log_path = store.parent / f"operator-{n}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trtop.cli", "operator", "--standalone",
                                 "--liveness", f"http://127.0.0.1:{health}/healthz"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_until("operator metrics", lambda: scrape(port), timeout=120)
        before = c.apiserver_counts()
        docs = [md_body(i, ns) for i in range(n)]
        for d in docs:
            d["metadata"].pop("uid")
        started = time.monotonic()
        # Created 4 at a time, as the floor creates its objects (one kubectl apply of 1000
        # objects is sequential and outran its 600 s timeout on a loaded machine).
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda d: c.custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, ns, names.PLURAL, d), docs))
        log(f"{n} ModelDeployments created in {time.monotonic() - started:.1f}s")
        first_ready: float | None = None
        while True:
            items = c.custom.list_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL)["items"]
            ready = sum(1 for m in items if any(x.get("type") == "Ready" and x.get("status") == "True"
                                                for x in (m.get("status") or {}).get("conditions", [])))
            if ready and first_ready is None:
                first_ready = time.monotonic() - started
            if ready == n:
                break
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"only {ready}/{n} Ready after an hour")
            time.sleep(2)
        result["all_ready_s"] = time.monotonic() - started
        result["first_ready_s"] = first_ready
        after = c.apiserver_counts()
        result["requests_per_md"] = (sum(after.get(s, 0) - before.get(s, 0) for s in ("trtop-writes", "trtop-reads"))
                                     / n)
        result["writes_per_md"] = (after.get("trtop-writes", 0) - before.get("trtop-writes", 0)) / n
        log(f"all {n} Ready in {result['all_ready_s']:.1f}s; at rest for 2 minutes")
        rest_from = c.apiserver_counts()
        time.sleep(120)
        rest_to = c.apiserver_counts()
        result["writes_per_min_at_rest"] = (rest_to.get("trtop-writes", 0) - rest_from.get("trtop-writes", 0)) / 2
        jobs = c.batch.list_namespaced_job(ns).items
        result["jobs"] = len(jobs)
        result["distinct_keys"] = len({j.metadata.labels.get(names.LABEL_ENGINE_KEY) for j in jobs})
        result["rss_mb"] = rss_mb(proc.pid)
        text = scrape(port)
        result["p50_s"], result["p99_s"] = quantile(text, 0.5), quantile(text, 0.99)
        result["new_type_first_s"], result["new_type_all_s"], result["new_type_reconciles"] = new_gpu_type(
            c, ns, port, n, new_type_timeout)
        result["tracebacks"] = log_path.read_text(errors="replace").count("Traceback")
        final = scrape(port)
        (log_path.parent / f"operator-{n}.metrics").write_text(final)
        by = re.findall(r'^trtop_operator_api_requests_total\{method="([A-Z]+)",resource="([^"]*)"\} ([0-9.e+]+)$',
                        final, re.M)
        log("operator's API requests by method/resource: " + ", ".join(
            f"{m} {r}: {float(v):.0f}" for m, r, v in sorted(by, key=lambda x: -float(x[2]))))
        log(f"operator log: {log_path}")
    finally:
        stand_in.stopped.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        c.kubectl("delete", "namespace", ns, "--wait=false")


def new_gpu_type(c: Cluster, ns: str, port: int, n: int, timeout: float) -> tuple[float, float, float]:
    """(seconds to its first build Job, to all N/2 of them (nan past ``timeout``), reconciles it caused)."""
    name, product, cc = NEW_TYPE
    before = metric(scrape(port), "trtop_operator_reconcile_seconds_count")
    node = build_node(Pool(name=name, count=1, cpu="96", memory="1Ti", gpu=Gpu(product=product,
                                                                            compute_capability=cc, count=8)), 0)
    selector = f"{names.LABEL_TARGET}=sm{cc.replace('.', '')}-{product.lower()}"
    started = time.monotonic()
    c.core.create_node(node)
    try:
        wait_until("the new type's first build Job", lambda: c.batch.list_namespaced_job(
            ns, label_selector=selector).items, timeout=600, interval=0.2)
        first = time.monotonic() - started
        try:
            wait_until("all of the new type's build Jobs", lambda: len(c.batch.list_namespaced_job(
                ns, label_selector=selector).items) >= n // 2, timeout=timeout, interval=0.5)
            every = time.monotonic() - started
        except RuntimeError as e:
            log(str(e)[:300])
            every = float("nan")
        last, stable_since, waited = -1.0, time.monotonic(), time.monotonic()
        while time.monotonic() - stable_since < 10:  # the wave of reconciles it caused has ended
            count = metric(scrape(port), "trtop_operator_reconcile_seconds_count")
            if count != last:
                last, stable_since = count, time.monotonic()
            if time.monotonic() - waited > 600:
                log(f"reconciles still running 600 s after the node joined ({last - before:.0f} so far)")
                break
            time.sleep(1)
        return first, every, last - before
    finally:
        c.core.delete_node(node["metadata"]["name"])


def start_cluster(name: str = "trtop-bench", attempts: int = 3) -> testing.DevCluster:
    """The bench cluster; a start that failed (kwok picks ports at random: on a busy host one
    can be taken) is torn down and tried again."""
    from trtop_dev.devcluster import cluster
    for attempt in range(attempts):
        try:
            return testing.start_session(name, log=log)
        except Exception as e:  # noqa: BLE001 - retried below
            log(f"cluster start failed ({e}); tearing it down")
            cluster.down(name)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="ModelDeployments (repeat: 100, 300, 1000)")
    parser.add_argument("--gpu-nodes", type=int, default=200)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--keep-floor", action="store_true",
                        help="leave the floor's objects while the operator runs (needs GPUs for 2 x N pods)")
    parser.add_argument("--new-type-timeout", type=float, default=1800.0,
                        help="seconds to wait for all of the new GPU type's build Jobs")
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster running")
    parser.add_argument("--floor-seconds", type=float, action="append",
                        help="reuse a floor measured earlier for the same N (one per --n) instead of measuring it")
    args = parser.parse_args(argv)
    sizes = args.n or [100]
    if args.keep:
        os.environ["TRTOP_TEST_KEEP_CLUSTER"] = "1"
    session = start_cluster()
    rows = []
    try:
        c = Cluster(session)
        log(f"{args.gpu_nodes} GPU nodes ({args.gpus_per_node} GPUs each) over {len(TYPES)} types")
        c.nodes(args.gpu_nodes, args.gpus_per_node)
        kubeconfig = operator_identity(c)
        settings = Settings(store_uri="/tmp/unused")
        reused = dict(zip(sizes, args.floor_seconds or []))
        for n in sizes:
            row: dict[str, Any] = {"n": n}
            try:
                row["floor_s"] = reused[n] if n in reused else floor(c, n, settings, args.keep_floor)
                log(f"N={n}: floor {row['floor_s']:.1f}s")
                run_operator(c, n, kubeconfig, row, args.new_type_timeout)
            except Exception as e:  # noqa: BLE001 - report the sizes that did run
                log(f"N={n} failed: {type(e).__name__}: {str(e)[:500]}")
                continue
            rows.append(row)
            log(json.dumps(row))
    finally:
        testing.stop_session(session)
    print("| N | floor (s) | all Ready (s) | x floor | first Ready (s) | API requests / MD | writes / MD "
          "| writes/min at rest | Jobs / keys | RSS (MB) | reconcile p50 / p99 (s) "
          "| new type: first / all Jobs (s) | reconciles for it | tracebacks |")
    print("|---" * 14 + "|")
    for r in rows:
        print(f"| {r['n']} | {r['floor_s']:.1f} | {r['all_ready_s']:.1f} | {r['all_ready_s'] / r['floor_s']:.2f} "
              f"| {r['first_ready_s']:.1f} | {r['requests_per_md']:.1f} | {r['writes_per_md']:.1f} "
              f"| {r['writes_per_min_at_rest']:.1f} | {r['jobs']} / {r['distinct_keys']} | {r['rss_mb']:.0f} "
              f"| {r['p50_s']:g} / {r['p99_s']:g} | {r['new_type_first_s']:.2f} / {r['new_type_all_s']:.1f} "
              f"| {r['new_type_reconciles']:.0f} "
              f"| {r['tracebacks']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
