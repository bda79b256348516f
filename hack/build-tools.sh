#!/usr/bin/env bash
# Builds the dev cluster's binaries from the Go module proxy into a cache keyed by version:
#   $TRTOP_CACHE/bin/<tool>-<version>/<binaries>
# Kubernetes (apiserver, controller-manager, scheduler, kubectl), etcd, kwok+kwokctl and helm
# each get their own wrapper module so their dependency versions never mix.
# A warm cache makes this a no-op that takes well under a second.
# Usage: hack/build-tools.sh [all|etcd|kwok|helm|kubernetes|kind]   (kind is not part of all:
# only `trtop dev cluster up --provider kind` needs it). Concurrent runs wait for each other.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${TRTOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trtop}
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

only=${1:-all}
case $only in all|etcd|kwok|helm|kubernetes|kind) ;; *) echo "usage: $0 [all|etcd|kwok|helm|kubernetes|kind]" >&2; exit 2 ;; esac

mkdir -p "$cache/bin"
# One build at a time per cache (CI, the pytest fixture and a person may start it together).
exec 9>"$cache/.build.lock"
flock 9
started=$SECONDS
need_go() {
  command -v go >/dev/null || { echo "build-tools: Go >= 1.26 is needed to build $1 (https://go.dev/dl/)" >&2; exit 1; }
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out="$cache/bin/kubernetes-$KUBERNETES_VERSION"
  if [[ -x $out/kubectl && -x $out/kube-apiserver && -x $out/kube-controller-manager && -x $out/kube-scheduler ]]; then
    return 0
  fi
  need_go Kubernetes
  log "building Kubernetes $v (cold: 5-25 min on 2 cores)"
  local mod="$cache/src/kubernetes-$v"
  rm -rf "$mod"; mkdir -p "$mod" "$out.tmp"
  local staging=${v/v1./v0.}
  (
    cd "$mod"
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
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy -e >/dev/null 2>&1 || go mod tidy
    local minor=${v#v1.}; minor=${minor%%.*}
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
    done
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      log "  go build $c"
      go build -trimpath -ldflags "$ld" -o "$out.tmp/$c" "k8s.io/kubernetes/cmd/$c"
    done
  )
  # A build without the ldflags reports v0.0.0-master and breaks helm's kubeVersion checks.
  "$out.tmp/kubectl" version --client | grep -q "Client Version: $v" \
    || { echo "build-tools: kubectl does not report $v" >&2; exit 1; }
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
      go build -trimpath -ldflags "$ld" -o "$out.tmp/${p#*=}" "${p%=*}"
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

case $only in
  all|etcd) build_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3=etcd ;;&
  all|kwok) LDFLAGS_EXTRA="-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION" \
              build_simple kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok=kwok sigs.k8s.io/kwok/cmd/kwokctl=kwokctl ;;&
  all|helm) LDFLAGS_EXTRA="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" LDFLAGS_FN=helm_kube_ldflags \
              build_simple helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm=helm ;;&
  all|kubernetes) build_kubernetes ;;&
  kind) build_simple kind "$KIND_VERSION" sigs.k8s.io/kind sigs.k8s.io/kind=kind ;;
esac
if (( SECONDS - started > 2 )); then log "done in $((SECONDS - started))s"; fi
