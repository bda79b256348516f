"""The local dev cluster: a real Kubernetes control plane with fake GPU nodes.

``trtop dev cluster up|down|status`` and ``trtop dev nodes apply`` (``cli``) start
kube-apiserver, etcd, kube-controller-manager, kube-scheduler and kwok through
``kwokctl --runtime binary`` (``kwok``) or kind where Docker runs (``kind``), from binaries
built by ``hack/build-tools.sh`` (``tools``), and create the node pools of a pools file
(``pools`` builds the Node manifests, ``nodes`` applies them). ``testing`` holds the pytest
helpers used by tests/conftest.py. See docs/dev-cluster.md.
"""
