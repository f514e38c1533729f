#!/usr/bin/env bash
# Build the ideamill OCI image offline: a minimal Debian rootfs made by
# mmdebstrap from the Debian packages apt already reaches (no registry is
# pulled from), imported by buildah, plus the ideamill binary.
#
#   deploy/container/build.sh [BINARY]
#
# BINARY (or $IDEAMILL_BINARY): the ideamill to put in [target/release/ideamill].
# Environment:
#   IMAGE     the tag to give it [localhost/ideamill:VERSION]
#   VARIANT   full (bubblewrap, tini, Python 3 for the scaffolded QA gate,
#             git) or slim (bubblewrap and tini: command stages in sh) [full]
#   EXTRA_PACKAGES  more Debian packages, comma-separated []
#   MIRROR    the Debian mirror [the one in /etc/apt/sources.list*]
#   SUITE     the Debian suite [the one in /etc/apt/sources.list*]
#   CACHE_DIR where the rootfs tarballs are kept, keyed by their package
#             list [${XDG_CACHE_HOME:-~/.cache}/ideamill/container]
#   SOURCE_URL the source label [git's origin, else this checkout]
#   FORMAT    docker (keeps the HEALTHCHECK) or oci (keeps annotations,
#             drops the HEALTHCHECK: OCI has no such field) [docker]
# Prints the tag on the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary="${1:-${IDEAMILL_BINARY:-$repo/target/release/ideamill}}"
variant="${VARIANT:-full}"
format="${FORMAT:-docker}"
cache_dir="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ideamill/container}"

die() { echo "build.sh: $*" >&2; exit 1; }

[ -f "$binary" ] || die "no ideamill binary at $binary (build one: cargo build --release -p ideamill)"
[ -x "$binary" ] || die "$binary is not executable"
for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install mmdebstrap buildah podman)"
done
case "$variant" in full | slim) ;; *) die "VARIANT must be full or slim, not '$variant'" ;; esac
case "$format" in docker | oci) ;; *) die "FORMAT must be docker or oci, not '$format'" ;; esac

# The mirror and suite apt uses here: deb822 sources first, then one-line ones.
apt_source() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ {u=$2} /^Suites:/ {s=$2} u && s {print u, s; exit}' "$f"
    return
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && $2 !~ /^\[/ {print $2, $3; exit} $1 == "deb" && $2 ~ /^\[/ {print $3, $4; exit}' "$f"
  done | head -n1
}
read -r found_mirror found_suite < <(apt_source || true) || true
mirror="${MIRROR:-${found_mirror:-}}"
suite="${SUITE:-${found_suite:-}}"
[ -n "$mirror" ] && [ -n "$suite" ] || die "cannot tell the Debian mirror and suite from /etc/apt; set MIRROR and SUITE"

# What the stages need: bubblewrap (the sandbox of every command stage),
# ca-certificates (HTTPS to model providers) and tini (PID 1: forwards
# signals, reaps what escapes the engine's own subreaper); in the full
# variant also Python, for the QA gate that `ideamill init` scaffolds
# (stages/qa.py), and git, which ideamill never runs but agent CLIs and
# generated projects' tools expect (it brings Perl: 50 MB of the 70 MB
# the slim variant saves). EXTRA_PACKAGES adds more (e.g. an agent's
# runtime), comma-separated Debian package names.
packages="bubblewrap,ca-certificates,tini"
[ "$variant" = full ] && packages="$packages,python3,git"
if [ -n "${EXTRA_PACKAGES:-}" ]; then
  case "$EXTRA_PACKAGES" in
    *[!a-z0-9.+,-]*) die "EXTRA_PACKAGES must be comma-separated Debian package names, not '$EXTRA_PACKAGES'" ;;
  esac
  packages="$packages,$EXTRA_PACKAGES"
fi

version="$("$binary" --version | awk '{print $2}')"
[ -n "$version" ] || die "$binary --version printed no version"
tag="$version"
[ "$variant" = slim ] && tag="$version-slim"
image="${IMAGE:-localhost/ideamill:$tag}"

# Essential + our packages, no apt, no docs, locales or man pages; the user
# ideamill (uid 10001) and /data, its volume, added by hooks (the essential
# set has no useradd).
mm_args=(
  --variant=essential --format=tar --include="$packages"
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --customize-hook='echo "ideamill:x:10001:10001:ideamill:/data:/usr/sbin/nologin" >> "$1/etc/passwd"'
  --customize-hook='echo "ideamill:x:10001:" >> "$1/etc/group"'
  --customize-hook='echo "ideamill:!:0:0:99999:7:::" >> "$1/etc/shadow"'
  --customize-hook='mkdir -p "$1/data" && chown 10001:10001 "$1/data" && chmod 0750 "$1/data"'
  --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*'
)

# The rootfs is cached by everything that goes into it (not by the date:
# delete the cache to pick up Debian's updates), so that a rebuild with
# only a new binary takes seconds.
key="$(printf '%s\n' "$mirror" "$suite" "${mm_args[@]}" | sha256sum | cut -c1-16)"
rootfs="$cache_dir/rootfs-$suite-$variant-$key.tar"
mkdir -p "$cache_dir"
if [ ! -s "$rootfs" ]; then
  echo "Making the rootfs ($suite from $mirror: $packages) into $rootfs" >&2
  tmp="${rootfs%.tar}.tmp$$.tar"
  trap 'rm -f "$tmp"' EXIT
  mmdebstrap "${mm_args[@]}" "$suite" "$tmp" "$mirror" >&2
  mv "$tmp" "$rootfs"
  trap - EXIT
  # Older recipes' tarballs of this suite and variant are of no more use.
  find "$cache_dir" -maxdepth 1 -name "rootfs-$suite-$variant-*.tar" ! -name "${rootfs##*/}" -delete
fi

# The binary, stripped (debug info is most of a debug build's size).
work="$(mktemp -d)"
trap 'rm -rf "$work"; [ -n "${ctr:-}" ] && buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
cp "$binary" "$work/ideamill"
if command -v strip >/dev/null && [ "$(head -c4 "$binary" | tr -d '\177')" = ELF ]; then
  strip --strip-debug "$work/ideamill"
fi
cp "$here/healthcheck.sh" "$work/ideamill-healthcheck"
chmod 0755 "$work/ideamill" "$work/ideamill-healthcheck"

revision="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ctr="$(buildah from --format "$format" scratch)"
buildah add --quiet "$ctr" "$rootfs" / >/dev/null
buildah copy --quiet "$ctr" "$work/ideamill" /usr/local/bin/ideamill >/dev/null
buildah copy --quiet "$ctr" "$work/ideamill-healthcheck" /usr/local/bin/ideamill-healthcheck >/dev/null

meta=(
  "org.opencontainers.image.title=ideamill"
  "org.opencontainers.image.description=Turns a queue of ideas into generated, QA-checked code, unattended."
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
  "org.opencontainers.image.source=${SOURCE_URL:-$(git -C "$repo" remote get-url origin 2>/dev/null || echo "file://$repo")}"
  "org.opencontainers.image.licenses=$(awk -F'"' '/^license *=/ {print $2; exit}' "$repo/Cargo.toml")"
  "org.opencontainers.image.base.name=debian:$suite (mmdebstrap, $variant)"
)
config=(
  --user 10001:10001
  --workingdir /data
  --volume /data
  --port 9464
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env IDEAMILL_CONFIG=/data/ideamill.toml
  --env HOME=/data
  --env IDEAMILL_PROBE_PORT=9464
  # tini reaps and forwards signals; ideamill itself is a child subreaper
  # for the jobs' processes, so tini only sees what escapes it.
  --entrypoint '["/usr/bin/tini", "--", "/usr/local/bin/ideamill"]'
  --cmd 'run --no-supervisor --listen 0.0.0.0:9464'
  --stop-signal SIGTERM
)
for m in "${meta[@]}"; do config+=(--label "$m"); done
if [ "$format" = oci ]; then
  for m in "${meta[@]}"; do config+=(--annotation "$m"); done
else
  config+=(
    --healthcheck 'CMD /usr/local/bin/ideamill-healthcheck'
    --healthcheck-interval 30s --healthcheck-timeout 5s
    --healthcheck-start-period 30s --healthcheck-retries 3
  )
fi
buildah config "${config[@]}" "$ctr"
buildah commit --quiet --format "$format" --rm "$ctr" "$image" >/dev/null
ctr=""
echo "$image"
