#!/usr/bin/env bash
# Build ctfm's container images offline, on machines that cannot pull from Docker Hub:
#   1. the base image ctfm-base:<BASE_TAG> (Debian bookworm minbase + python3, numpy, nibabel, h5py from
#      Debian's own packages), made with mmdebstrap and `docker import`;
#   2. the baseline extractor image (Dockerfile.baseline beside this script, the hu-stats extractor
#      ../extractors/hu_stats.py behind extract_feat_LP.sh / extract_feat_EAO.sh), built FROM that base;
#   3. OUT/baseline_lp.tar.gz and OUT/baseline_eao.tar.gz, written with `docker save | gzip`, their image named
#      baseline_lp:latest and baseline_eao:latest as the reference runner expects of those file names.
# Idempotent and cached: each step is skipped when its result (image tag, tarball) already exists, unless
# FORCE=1. Usage: build_images.sh [--base-only | --no-save] [OUT]   (OUT defaults to build/images under the
# current folder;
# --no-save builds the images but writes no tarballs, for running the baseline from this machine's engine).
# It lives inside the ctfm package with everything it builds from, so it works from a checkout
# (`make images`) and from an installed wheel alike.
# Needs: a running Docker engine and, for step 1 only, mmdebstrap plus a reachable Debian mirror
# (MIRROR, default: the first Debian URI in this machine's apt sources).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CONTEXT_FILES=("$HERE/../extractors/hu_stats.py" "$HERE/extract_feat_LP.sh" "$HERE/extract_feat_EAO.sh"
  "$HERE/Dockerfile.baseline")

BASE_ONLY=0
SAVE=1
if [ "${1:-}" = "--base-only" ]; then BASE_ONLY=1; shift; fi
if [ "${1:-}" = "--no-save" ]; then SAVE=0; shift; fi
OUT=${1:-build/images}
SUITE=${SUITE:-bookworm}
host_mirror() {  # the Debian mirror apt already uses here (deb822 .sources or one-line .list files)
  {
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}'
  } | awk '!/security/ && !found {print; found = 1}'
}
MIRROR=${MIRROR:-$(host_mirror || true)}
[ -n "$MIRROR" ] || { echo "build_images: no Debian mirror in the apt sources; set MIRROR" >&2; exit 1; }
BASE_TAG=${BASE_TAG:-ctfm-base:${SUITE}-2}  # bump the suffix when the recipe below changes
# The baseline's tag is a hash of what goes into it, so a changed extractor or script rebuilds it.
BASELINE_HASH=$(cat "${CONTEXT_FILES[@]}" | sha256sum | cut -c1-12)
BASELINE_TAG=${BASELINE_TAG:-ctfm-baseline:${BASELINE_HASH}}
FORCE=${FORCE:-0}
PACKAGES=python3,python3-numpy,python3-nibabel,python3-h5py

have_image() { [ "$FORCE" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
  if have_image "$BASE_TAG"; then
    echo "build_images: $BASE_TAG exists, skipped"
    return
  fi
  command -v mmdebstrap >/dev/null || { echo "build_images: mmdebstrap missing (apt-get install mmdebstrap)" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "build_images: building $BASE_TAG with mmdebstrap ($SUITE, $PACKAGES)"
  # No Recommends; documentation, man pages and locales are never unpacked. scipy (a hard dependency of
  # nibabel) depends on pythran, which drags in gcc, g++ and the boost headers: their files are deleted
  # after all packages are configured (customize hooks; mmdebstrap itself drops the apt lists).
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/usr/include "$1"/usr/lib/gcc "$1"/usr/libexec/gcc' \
    --customize-hook='find "$1"/usr/lib -name "*.a" -delete; rm -f "$1"/usr/bin/x86_64-linux-gnu-*' \
    "$SUITE" "$tmp/rootfs.tar" "$MIRROR"
  docker import --change 'ENV PYTHONDONTWRITEBYTECODE=1' --change 'CMD ["python3"]' \
    "$tmp/rootfs.tar" "$BASE_TAG" >/dev/null
  echo "build_images: $BASE_TAG imported ($(docker image inspect -f '{{.Size}}' "$BASE_TAG") bytes)"
}

build_baseline() {
  if have_image "$BASELINE_TAG"; then
    echo "build_images: $BASELINE_TAG exists, skipped"
  else
    echo "build_images: building $BASELINE_TAG"
    local ctx
    ctx=$(mktemp -d)
    cp "${CONTEXT_FILES[@]}" "$ctx/"
    docker build --quiet --build-arg "BASE=$BASE_TAG" -f "$ctx/Dockerfile.baseline" -t "$BASELINE_TAG" "$ctx" \
      >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; exit 1; }
    rm -rf "$ctx"
  fi
  [ "$SAVE" = 1 ] || return 0
  mkdir -p "$OUT"
  local task image_id
  image_id=$(docker image inspect -f '{{.Id}}' "$BASELINE_TAG")
  for task in lp eao; do
    # The reference runner loads baseline_lp.tar.gz and starts baseline_lp:latest: the tarball names its
    # image so. The tag exists in the engine only while it is saved, unless it was there before.
    local tarball="$OUT/baseline_${task}.tar.gz" ref="baseline_${task}:latest" stamp prior
    stamp="$image_id $ref"
    if [ "$FORCE" != 1 ] && [ -s "$tarball" ] && [ "$(cat "$tarball.id" 2>/dev/null)" = "$stamp" ]; then
      echo "build_images: $tarball exists, skipped"
      continue
    fi
    prior=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)
    if [ -n "$prior" ] && [ "$prior" != "$image_id" ]; then
      echo "build_images: $ref names another image ($prior); remove that tag first" >&2
      exit 1
    fi
    docker tag "$BASELINE_TAG" "$ref"
    docker save "$ref" | gzip -1 >"$tarball.part"
    [ -n "$prior" ] || docker rmi "$ref" >/dev/null
    mv "$tarball.part" "$tarball"
    echo "$stamp" >"$tarball.id"
    echo "build_images: wrote $tarball ($(stat -c %s "$tarball") bytes)"
  done
}

build_base
[ "$BASE_ONLY" = 1 ] || build_baseline
echo "BASE_TAG=$BASE_TAG"
[ "$BASE_ONLY" = 1 ] || echo "BASELINE_TAG=$BASELINE_TAG"
