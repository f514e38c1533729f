#!/usr/bin/env bash
# Render the kustomize base and every overlay, and validate each object
# offline against the Kubernetes schemas in strict mode (kubernetes-validate,
# pinned in requirements.txt, installed into a venv on first use).
#
#   deploy/kubernetes/check.sh [--json]
#
# --json: also print, as one JSON document on stdout, every container the
# manifests run (args, ports, probes) and the ideamill.toml each overlay
# ships, for the test that checks them against the binary.
# Environment: K8S_VERSION [1.33.0], K8S_VENV [~/.cache/ideamill/k8s-validate-<hash>].
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
key="$(sha256sum "$here/requirements.txt" | cut -c1-12)"
venv="${K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ideamill/k8s-validate-$key}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "Installing kubernetes-validate into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
fi
exec "$venv/bin/python" "$here/check.py" "$venv/bin/kubernetes-validate" "$@"
