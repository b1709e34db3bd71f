#!/usr/bin/env bash
# Renders a kustomization and checks it offline: Kubernetes schemas (strict)
# and what matters for Switchboard (probes, grace period, PDBs, pinned tags,
# resources). Usage: scripts/k8s-check.sh [KUSTOMIZATION_DIR]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir="${1:-$SB_ROOT/k8s}"
ensure_k8s_tools
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
"$KUBECTL_BIN" kustomize "$dir" > "$rendered" || die "kustomize could not render $dir"
PYTHONPATH="$K8S_PYTHONPATH" python3 -m kubernetes_validate --strict --quiet -k "${K8S_VERSION:-1.33.0}" "$rendered" \
  || die "schema validation failed for $dir"
PYTHONPATH="$K8S_PYTHONPATH" python3 "$SB_ROOT/scripts/k8s_policy.py" "$rendered" || die "policy check failed for $dir"
echo "k8s: $dir renders, validates against Kubernetes ${K8S_VERSION:-1.33.0} and passes the policy checks"
