#!/usr/bin/env bash
# Build (or reuse) the test control plane binary `kubecp` and helm, in a cache outside the repo.
#
#   tests/cluster/build.sh            build both if missing; print KUBECP=<path> and HELM=<path>
#   tests/cluster/build.sh node       also CoreDNS and local-path-provisioner for a real node;
#                                     print COREDNS=<path> and LOCAL_PATH=<path> too
#   tests/cluster/build.sh node netpol  and kube-network-policies; print NETPOL=<path> too
#   tests/cluster/build.sh s3         only the S3-compatible server the model-directory-URL tests
#                                     run (versitygw); print S3GW=<path>, build nothing else
#
# The kubecp binary is cached under ${KUBELEARN_CACHE:-~/.cache/kubelearn}/kubecp-<hash>/, where
# <hash> is the sha256 of go.sum together with go.mod, the Go sources and this script (an edited
# main.go or changed flags must never be served a stale binary). A cold build compiles most of
# Kubernetes: measured 6-7 minutes on 2 cores, 8.5 with an empty Go module and build cache and
# helm included (longer when the cores are busy).
# Progress goes to stderr; stdout carries only the KEY=path lines.
set -euo pipefail

HELM_MODULE="helm.sh/helm/v3"
HELM_VERSION="v3.19.5"
COREDNS_MODULE="github.com/coredns/coredns"
COREDNS_VERSION="v1.15.0"
# Dynamic PersistentVolumes in directories on the node (kind ships it). v0.0.30 is the newest
# release the Go module proxy serves whole; it builds with this machine's Go.
LOCAL_PATH_MODULE="github.com/rancher/local-path-provisioner"
LOCAL_PATH_VERSION="v0.0.30"
# NetworkPolicy enforcement, from Kubernetes SIG Network (kind ships it).
NETPOL_PACKAGE="sigs.k8s.io/kube-network-policies/cmd"
NETPOL_VERSION="v0.8.0"
# An S3-compatible server for the tests of a model directory s3://... (Apache-2.0): Versity's
# S3 gateway over a directory, which checks every request's SigV4 signature as S3 does. Not
# SeaweedFS: its go.mod has a replace directive, so `go install` refuses it.
S3GW_PACKAGE="github.com/versity/versitygw/cmd/versitygw"
S3GW_VERSION="v1.8.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/kubecp"
cache="${KUBELEARN_CACHE:-$HOME/.cache/kubelearn}"
mkdir -p "$cache"

log() { printf '[kubecp-build] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not on PATH: the control plane is built from Go modules"; exit 1; }

script_key="$(sha256sum "$here/build.sh" | cut -c1-8)"
key="$(cd "$mod" && cat go.sum go.mod $(ls ./*.go | sort) "$here/build.sh" | sha256sum | cut -c1-16)"
dir="$cache/kubecp-$key"
bin="$dir/kubecp"

# run_with_progress LOGFILE WHAT TOTAL CMD...: run CMD (go build -v) with its output in LOGFILE and
# report every 30 s how many packages it compiled (of TOTAL, when TOTAL is not empty).
run_with_progress() {
	local logfile="$1" what="$2" total="$3"
	shift 3
	local start=$SECONDS next=30
	"$@" >"$logfile" 2>&1 &
	local pid=$!
	trap 'kill "$pid" 2>/dev/null || true' EXIT INT TERM
	while kill -0 "$pid" 2>/dev/null; do
		sleep 2
		if (( SECONDS - start >= next )) && kill -0 "$pid" 2>/dev/null; then
			local n
			n="$(grep -c -v '^go: ' "$logfile" || true)"
			log "$what: $((SECONDS - start))s, ${n}${total:+ of ~$total} packages compiled"
			next=$((next + 30))
		fi
	done
	local rc=0
	wait "$pid" || rc=$?
	trap - EXIT INT TERM
	if (( rc != 0 )); then
		log "$what FAILED (exit $rc) after $((SECONDS - start))s; last lines of $logfile:"
		tail -40 "$logfile" >&2
		exit "$rc"
	fi
	log "$what done in $((SECONDS - start))s"
}

build_kubecp() {
	if [[ -x "$bin" ]] && "$bin" version >/dev/null 2>&1; then
		log "reusing $bin ($("$bin" version))"
		touch "$dir"
		return
	fi
	local kver
	kver="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$mod/go.mod")"
	local major="${kver#v}"; major="${major%%.*}"
	local minor="${kver#v*.}"; minor="${minor%%.*}"
	local pkg="k8s.io/component-base/version"
	local ldflags="-s -w -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	mkdir -p "$dir"
	log "building kubecp (Kubernetes $kver) into $bin"
	log "a cold build compiles most of Kubernetes: 6-7 minutes on 2 cores, longer when they are busy"
	local tmp="$bin.tmp.$$" total
	log "resolving packages (downloads the Go modules on a fresh machine)"
	if ! total="$(cd "$mod" && go list -deps . 2>"$dir/modules.log" | wc -l)"; then
		log "resolving the Go modules FAILED; last lines of $dir/modules.log:"
		tail -20 "$dir/modules.log" >&2
		exit 1
	fi
	log "$(grep -c '^go: downloading' "$dir/modules.log" || true) modules downloaded, $total packages"
	(cd "$mod" && run_with_progress "$dir/build.log" "go build kubecp" "$total" \
		go build -v -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp" .)
	mv -f "$tmp" "$bin"
	log "built $bin ($(du -h "$bin" | cut -f1), $("$bin" version))"
	# Builds for other sources that have not been used for two weeks are only taking space.
	find "$cache" -maxdepth 1 \( -name 'kubecp-*' -o -name 'helm-*' -o -name 'coredns-*' -o -name 'kube-network-policies-*' \
		-o -name 'local-path-provisioner-*' \) -type d -mtime +14 \
		-exec rm -rf {} + 2>/dev/null || true
}

build_helm() {
	local hdir="$cache/helm-$HELM_VERSION-$script_key"
	local hbin="$hdir/helm"
	if [[ -x "$hbin" ]] && "$hbin" version --short >/dev/null 2>&1; then
		log "reusing $hbin ($("$hbin" version --short))"
		touch "$hdir"
		echo "$hbin"
		return
	fi
	mkdir -p "$hdir"
	# As helm's own Makefile does: the default Kubernetes version (helm template, lint) is the
	# one of the client-go helm is built with, not the v1.20 fallback of a bare go install.
	local gomod clientgo minor
	gomod="$(go mod download -json "$HELM_MODULE@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
	clientgo="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")"
	minor="${clientgo#v0.}"; minor="${minor%%.*}"
	local ldflags="-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION"
	for pkg in pkg/chartutil pkg/lint/rules; do
		ldflags+=" -X $HELM_MODULE/$pkg.k8sVersionMajor=1 -X $HELM_MODULE/$pkg.k8sVersionMinor=$minor"
	done
	log "installing helm $HELM_VERSION (default Kubernetes 1.$minor) with go install into $hdir"
	GOBIN="$hdir" run_with_progress "$hdir/build.log" "go install helm" "" \
		go install -v -trimpath -ldflags "$ldflags" "$HELM_MODULE/cmd/helm@$HELM_VERSION"
	log "installed $hbin ($("$hbin" version --short))"
	echo "$hbin"
}

# go_install NAME PACKAGE VERSION: `go install PACKAGE@VERSION` into the cache, binary NAME.
go_install() {
	local name="$1" pkg="$2" version="$3"
	local tdir="$cache/$name-$version-$script_key"
	local tbin="$tdir/$name"
	if [[ -x "$tbin" ]]; then
		log "reusing $tbin"
		touch "$tdir"
		echo "$tbin"
		return
	fi
	mkdir -p "$tdir/bin"
	log "installing $name $version with go install into $tdir (minutes on 2 cores)"
	GOBIN="$tdir/bin" run_with_progress "$tdir/build.log" "go install $name" "" \
		go install -v -trimpath -ldflags "-s -w" "$pkg@$version"
	mv -f "$tdir/bin/$(basename "$pkg")" "$tbin"
	rmdir "$tdir/bin"
	log "installed $tbin"
	echo "$tbin"
}

if [[ "${1:-}" == s3 ]]; then
	exec 9>"$cache/versitygw.lock"
	flock 9
	echo "S3GW=$(go_install versitygw "$S3GW_PACKAGE" "$S3GW_VERSION" | tail -1)"
	exit 0
fi

# One build at a time per cache entry: concurrent test sessions wait for the first one.
exec 9>"$cache/kubecp-$key.lock"
if ! flock -n 9; then
	log "another build of kubecp-$key is running; waiting for it"
	flock 9
fi
build_kubecp
helm_bin="$(build_helm | tail -1)"
echo "KUBECP=$bin"
echo "HELM=$helm_bin"
if [[ "${1:-}" == node ]]; then
	echo "COREDNS=$(go_install coredns "$COREDNS_MODULE" "$COREDNS_VERSION" | tail -1)"
	echo "LOCAL_PATH=$(go_install local-path-provisioner "$LOCAL_PATH_MODULE" "$LOCAL_PATH_VERSION" \
		| tail -1)"
	if [[ "${2:-}" == netpol ]]; then
		echo "NETPOL=$(go_install kube-network-policies "$NETPOL_PACKAGE" "$NETPOL_VERSION" | tail -1)"
	fi
fi
