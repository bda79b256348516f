#!/usr/bin/env bash
# Builds the dev cluster's binaries from the Go module proxy into a cache keyed by version:
#   $TRTOP_CACHE/bin/<tool>-<version>/<binaries>
# Kubernetes (apiserver, controller-manager, scheduler, kubectl), etcd, kwok+kwokctl and helm
# each get their own wrapper module so their dependency versions never mix.
# The real node: kubelet (+ kube-proxy and the pause binary, from the same Kubernetes module),
# runc, containerd (+ ctr, shim) and the CNI plugins; buildkit (buildkitd, buildctl) builds
# the images (hack/build-images.sh).
# A warm cache makes this a no-op that takes well under a second.
# Usage: hack/build-tools.sh [all|etcd|kwok|helm|kubernetes|kind|node|kubelet|runc|containerd|cni|pause|buildkit]
#   all:  the control plane (etcd kwok helm kubernetes); node: runc containerd cni pause kubelet;
#   image builds need runc containerd pause buildkit (not the kubelet: they start before it);
#   kind is only needed by `trtop dev cluster up --provider kind`.
# Each target has its own lock (kubernetes and kubelet share one: they share a module), so
# `all`, `node` and `buildkit` can build side by side; runs of one target wait for each other.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${TRTOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trtop}
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

targets="all etcd kwok helm kubernetes kind node kubelet runc containerd cni pause buildkit"
only=${1:-all}
[[ " $targets " == *" $only "* ]] || { echo "usage: $0 [${targets// /|}]" >&2; exit 2; }
# -p 2: the CI machine has 2 cores, shared with whatever else builds.
jobs=${TRTOP_BUILD_JOBS:-2}

mkdir -p "$cache/bin"
started=$SECONDS
need_go() {
  command -v go >/dev/null || { echo "build-tools: Go >= 1.26 is needed to build $1 (https://go.dev/dl/)" >&2; exit 1; }
}
# One build of a target at a time per cache (CI, the pytest fixture and a person may start
# it together). The Kubernetes module's lock keeps the old name so older checkouts wait too.
locked() {  # locked LOCKNAME COMMAND...
  local name=$1; shift
  (
    exec 9>"$cache/.build${name:+-$name}.lock"
    flock 9
    "$@"
  )
}

k8s_module() {  # the wrapper module of k8s.io/kubernetes, shared by the control plane and the node
  local v=$KUBERNETES_VERSION
  k8s_mod="$cache/src/kubernetes-$v"
  [[ -f $k8s_mod/.complete ]] && return 0
  local staging=${v/v1./v0.}
  rm -rf "$k8s_mod"; mkdir -p "$k8s_mod"
  (
    cd "$k8s_mod"
    go mod init trtop.local/k8s-tools >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    # Every staging module the real go.mod replaces with ./staging/... is pinned to its published twin.
    grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u > staging.txt
    {
      echo "module trtop.local/k8s-tools"; echo; echo "go 1.26"; echo
      echo "require k8s.io/kubernetes $v"; echo
      echo "replace ("
      while read -r m; do echo "	$m => $m $staging"; done < staging.txt
      echo ")"
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
    go mod tidy -e >/dev/null 2>&1 || go mod tidy
    touch .complete
  )
}

k8s_build() {  # k8s_build OUTDIR COMMAND...: the commands at KUBERNETES_VERSION, version-stamped
  local v=$KUBERNETES_VERSION out=$1; shift
  local minor=${v#v1.}; minor=${minor%%.*}
  local ld="-s -w" c
  for c in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $c.gitVersion=$v -X $c.gitMajor=1 -X $c.gitMinor=$minor -X $c.gitTreeState=clean -X $c.buildDate=2026-01-01T00:00:00Z"
  done
  for c in "$@"; do
    log "  go build $c"
    (cd "$k8s_mod" && go build -p "$jobs" -trimpath -ldflags "$ld" -o "$out/$c" "k8s.io/kubernetes/cmd/$c")
  done
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out="$cache/bin/kubernetes-$KUBERNETES_VERSION"
  if [[ -x $out/kubectl && -x $out/kube-apiserver && -x $out/kube-controller-manager && -x $out/kube-scheduler ]]; then
    return 0
  fi
  need_go Kubernetes
  log "building Kubernetes $v (cold: 5-25 min on 2 cores)"
  k8s_module
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  k8s_build "$out.tmp" kube-apiserver kube-controller-manager kube-scheduler kubectl
  # A build without the ldflags reports v0.0.0-master and breaks helm's kubeVersion checks. The output is
  # read whole first: `kubectl ... | grep -q` under pipefail failed at random (grep -q leaves at the first
  # line, kubectl's second write then dies of SIGPIPE and the pipeline reports 141).
  local reported
  reported=$("$out.tmp/kubectl" version --client 2>&1) || true
  [[ $reported == *"Client Version: $v"* ]] \
    || { echo "build-tools: kubectl does not report $v (it says: ${reported//$'\n'/; })" >&2; exit 1; }
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_kubelet() {  # kubelet and kube-proxy, from the control plane's module
  local v=$KUBERNETES_VERSION out="$cache/bin/kubelet-$KUBERNETES_VERSION"
  [[ -x $out/kubelet && -x $out/kube-proxy ]] && return 0
  need_go kubelet
  log "building kubelet and kube-proxy $v"
  k8s_module
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  k8s_build "$out.tmp" kubelet kube-proxy
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_pause() {  # the sandbox's pause binary from the Kubernetes module's own source (no module build)
  local v=$KUBERNETES_VERSION out="$cache/bin/pause-$KUBERNETES_VERSION"
  [[ -x $out/pause ]] && return 0
  need_go pause
  command -v gcc >/dev/null || { echo "build-tools: gcc (with static libc: libc6-dev) is needed for the pause binary" >&2; exit 1; }
  local src
  src=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  gcc -Os -Wall -Werror -static -DVERSION="$v-trtop" -o "$out.tmp/pause" "$src/build/pause/linux/pause.c"
  strip "$out.tmp/pause"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_simple() {  # name version module-for-go-get package=binary...
  local name=$1 v=$2 modpath=$3; shift 3
  local out="$cache/bin/$name-$v" p ok=1
  for p in "$@"; do [[ -x $out/${p#*=} ]] || ok=0; done
  [[ $ok == 1 ]] && return 0
  need_go "$name"
  log "building $name $v"
  local mod="$cache/src/$name-$v"
  rm -rf "$mod"; mkdir -p "$mod" "$out.tmp"
  (
    cd "$mod"
    go mod init "trtop.local/$name-tools" >/dev/null 2>&1
    go get "$modpath@$v" >/dev/null
    for p in "$@"; do go get "${p%=*}@$v" >/dev/null; done
    local ld="-s -w ${LDFLAGS_EXTRA:-}"
    if [[ -n ${LDFLAGS_FN:-} ]]; then ld+=" $($LDFLAGS_FN)"; fi
    for p in "$@"; do
      log "  go build ${p#*=}"
      go build -p "$jobs" -trimpath -tags "${GO_TAGS:-}" -ldflags "$ld" -o "$out.tmp/${p#*=}" "${p%=*}"
    done
  )
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# helm's Makefile: the Kubernetes version `helm template` assumes (and lints against) is the
# client-go it was built with, +1 major; without it helm says v1.20 and kubeVersion checks fail.
helm_kube_ldflags() {
  local v; v=$(go list -f '{{.Version}}' -m k8s.io/client-go)
  local minor=${v#v0.}; minor=${minor%%.*}
  local p
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    printf -- ' -X %s.k8sVersionMajor=1 -X %s.k8sVersionMinor=%s' "$p" "$p" "$minor"
  done
}

build_runc() {
  # seccomp needs cgo and libseccomp's headers (Debian: libseccomp-dev).
  pkg-config --exists libseccomp 2>/dev/null \
    || { echo "build-tools: runc needs libseccomp-dev (apt-get install libseccomp-dev)" >&2; exit 1; }
  CGO_ENABLED=1 GO_TAGS=seccomp LDFLAGS_EXTRA="-X main.version=${RUNC_VERSION#v}" \
    build_simple runc "$RUNC_VERSION" github.com/opencontainers/runc github.com/opencontainers/runc=runc
}

build_containerd() {
  local m=github.com/containerd/containerd/v2
  GO_TAGS=no_btrfs LDFLAGS_EXTRA="-X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=trtop" \
    build_simple containerd "$CONTAINERD_VERSION" $m \
    $m/cmd/containerd=containerd $m/cmd/ctr=ctr $m/cmd/containerd-shim-runc-v2=containerd-shim-runc-v2
}

build_cni() {
  local m=github.com/containernetworking/plugins
  LDFLAGS_EXTRA="-X $m/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    build_simple cni "$CNI_PLUGINS_VERSION" $m \
    $m/plugins/main/bridge=bridge $m/plugins/main/loopback=loopback \
    $m/plugins/ipam/host-local=host-local $m/plugins/meta/portmap=portmap
}

build_buildkit() {
  # `go install github.com/moby/buildkit/cmd/...@v` refuses buildkit's go.mod (it has
  # replace directives): a wrapper module builds it like the others.
  local m=github.com/moby/buildkit
  LDFLAGS_EXTRA="-X $m/version.Version=$BUILDKIT_VERSION -X $m/version.Revision=trtop" \
    build_simple buildkit "$BUILDKIT_VERSION" $m $m/cmd/buildkitd=buildkitd $m/cmd/buildctl=buildctl
}

case $only in
  all|etcd) locked etcd build_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3=etcd ;;&
  all|kwok) LDFLAGS_EXTRA="-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION" \
              locked kwok build_simple kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok=kwok sigs.k8s.io/kwok/cmd/kwokctl=kwokctl ;;&
  all|helm) LDFLAGS_EXTRA="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" LDFLAGS_FN=helm_kube_ldflags \
              locked helm build_simple helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm=helm ;;&
  all|kubernetes) locked "" build_kubernetes ;;&
  node|runc) locked runc build_runc ;;&
  node|containerd) locked containerd build_containerd ;;&
  node|cni) locked cni build_cni ;;&
  node|pause) locked pause build_pause ;;&
  node|kubelet) locked "" build_kubelet ;;&
  buildkit) locked buildkit build_buildkit ;;
  kind) locked kind build_simple kind "$KIND_VERSION" sigs.k8s.io/kind sigs.k8s.io/kind=kind ;;
esac
if (( SECONDS - started > 2 )); then log "done in $((SECONDS - started))s"; fi
