#!/usr/bin/env bash
# The telemetry tests' OTLP receiver decodes with the official protobuf
# definitions (opentelemetry-proto from PyPI, pinned with hashes in
# requirements.txt). This makes its venv once, under ~/.cache keyed by the
# requirements, and prints its python. `.ci/run` calls it before the tests,
# so that the tests themselves need no network.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
key="$(sha256sum "$here/requirements.txt" | cut -c1-12)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/ideamill/otlp-venv-$key"
if [ ! -e "$venv/.ready" ]; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if [ ! -e "$venv/.ready" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes \
      --only-binary=:all: -r "$here/requirements.txt" >&2
    touch "$venv/.ready"
  fi
fi
echo "$venv/bin/python"
