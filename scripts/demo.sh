#!/usr/bin/env bash
# Build ideamill, create a demo project, run a few sample ideas through the
# whole pipeline, and show where the results are.
#   DEMO_DIR: where to create the project (default: ./demo)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO_DIR:-$root/demo}

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/release/ideamill

if [ ! -f "$demo/ideamill.toml" ]; then
  "$bin" init "$demo"
fi
cd "$demo"
"$bin" validate
"$bin" add "a CLI that converts CSV to JSON"
"$bin" add "a function that checks whether a string is a palindrome"
"$bin" add "a tiny key-value store with a command-line interface"
"$bin" run --until-idle
echo
"$bin" list
echo
"$bin" status || true
echo
echo "Results: $demo/workspace/<id>/ holds each idea's files;"
echo "         '$bin show <id>' (run in $demo) shows its stages, attempts and outputs."
