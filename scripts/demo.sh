#!/usr/bin/env bash
# The main job, end to end: build ideamill, start a real local coding model
# (Qwen2.5-Coder-1.5B on llama.cpp, no API key), create a demo project, run sample
# ideas through outline -> tests -> reference -> implement -> qa, and show where the results are.
#
# Any other OpenAI-compatible endpoint works the same way:
#   IDEAMILL_PROVIDER_URL=https://api.openai.com/v1 IDEAMILL_MODEL=gpt-4o-mini \
#   IDEAMILL_API_KEY_ENV=OPENAI_API_KEY bash scripts/demo.sh
# DEMO_DIR sets where the project goes (default: ./demo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO_DIR:-$root/demo}

# Generated code runs confined by bubblewrap, and the QA gate runs the
# generated tests with the system's Python (the sandbox shows only /usr).
if ! command -v bwrap >/dev/null || [ ! -x /usr/bin/python3 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing bubblewrap and python3 (the sandbox of command stages)..." >&2
    apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap python3 util-linux >&2
  else
    echo "ideamill runs generated code confined by bubblewrap: install it (e.g. sudo apt-get install bubblewrap python3) and run this again." >&2
    exit 1
  fi
fi

echo "Building ideamill (release)..." >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/release/ideamill

init_args=()
if [ -n "${IDEAMILL_PROVIDER_URL:-}" ]; then
  init_args+=(--provider "$IDEAMILL_PROVIDER_URL" --model "${IDEAMILL_MODEL:?set IDEAMILL_MODEL too}")
  if [ -n "${IDEAMILL_API_KEY_ENV:-}" ]; then init_args+=(--api-key-env "$IDEAMILL_API_KEY_ENV"); fi
else
  echo "Starting the local model (the first time builds llama.cpp, 5-7 minutes, and downloads the 1.1 GB model)..." >&2
  url=$(bash "$root/scripts/llm-server.sh" start --model qwen-coder-1.5b)
  init_args+=(--provider "$url" --model qwen-coder-1.5b)
fi

if [ ! -f "$demo/ideamill.toml" ]; then
  "$bin" init "$demo" "${init_args[@]}" >&2
fi
cd "$demo"
"$bin" validate
"$bin" add "a function that checks whether a string is a palindrome"
"$bin" add "a function that converts Celsius to Fahrenheit"
"$bin" add "a function that counts the words in a sentence"
start=$(date +%s)
"$bin" run --until-idle
echo "Pipeline wall time: $(( $(date +%s) - start )) s for 3 ideas." >&2
echo
"$bin" list
echo
"$bin" status || true
echo
echo "Results are in $demo:"
echo "  workspace/<id>/          each idea's generated files"
echo "  $bin show <id>    its stages, attempts, model outputs, QA feedback, tokens and cost (run in $demo)"
echo "  http://127.0.0.1:9464/   the dashboard, while \`ideamill run\` runs (in $demo)"
if [ -z "${IDEAMILL_PROVIDER_URL:-}" ]; then
  echo "The local model keeps running for more ideas; stop it with: bash scripts/llm-server.sh stop"
fi
