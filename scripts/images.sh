#!/usr/bin/env bash
# Builds every container image locally: nothing can be pulled here.
#   scripts/images.sh base    - Debian base from Debian's packages (debootstrap)
#   scripts/images.sh infra   - broker (nisshi), etcd, PostgreSQL
#   scripts/images.sh services PROFILE_DIR - our three services from built binaries
# Tags are content hashes, so an unchanged image is never rebuilt.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

base_tag() { echo "switchboard/base:$(content_hash "$SB_ROOT/scripts/images/base.packages")"; }

build_base() {
  local tag; tag="$(base_tag)"
  if image_exists "$tag"; then echo "$tag"; return; fi
  mkdir -p "$SB_CACHE"
  local rootfs="$SB_CACHE/rootfs-$$"
  local include; include="$(paste -sd, "$SB_ROOT/scripts/images/base.packages")"
  log "debootstrapping the Debian base image $tag (about a minute)"
  as_root rm -rf "$rootfs"
  as_root debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$(debian_mirror)" \
    >"$SB_CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$SB_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  as_root tar -C "$rootfs" -c . | docker import - "$tag" >/dev/null
  as_root rm -rf "$rootfs"
  echo "$tag"
}

# build_image NAME CONTEXT_DIR: Dockerfile.NAME from scripts/images, FROM the base.
build_image() {
  local name="$1" ctx="$2" base; base="$(build_base)"
  local df="$SB_ROOT/scripts/images/$name.Dockerfile"
  local tag="switchboard/$name:$( (echo "$base"; cat "$df"; find "$ctx" -type f -print0 | sort -z | xargs -0 sha256sum | cut -c1-64) | sha256sum | cut -c1-12)"
  if ! image_exists "$tag"; then
    log "building image $tag"
    docker build -q --build-arg "BASE=$base" -f "$df" -t "$tag" "$ctx" >/dev/null
  fi
  docker tag "$tag" "switchboard/$name:local"
  echo "$tag"
}

build_infra() {
  build_image etcd "$SB_ROOT/scripts/images/ctx-empty"
  build_image postgres "$SB_ROOT/scripts/images/postgres"
  ensure_nisshi
  local ctx="$SB_CACHE/ctx-broker"; mkdir -p "$ctx"
  cmp -s "$NISSHI_BIN" "$ctx/nisshi" 2>/dev/null || cp "$NISSHI_BIN" "$ctx/nisshi"
  build_image broker "$ctx"
}

build_services() {
  local bindir="$1" ctx="$SB_CACHE/ctx-services"
  mkdir -p "$ctx"
  for b in messaging-server coordinator persister; do
    [ -x "$bindir/$b" ] || die "missing binary $bindir/$b"
    # Debug info is most of a debug build's size and useless in the image.
    strip --strip-debug -o "$ctx/$b.new" "$bindir/$b"
    if cmp -s "$ctx/$b.new" "$ctx/$b" 2>/dev/null; then rm -f "$ctx/$b.new"; else mv "$ctx/$b.new" "$ctx/$b"; fi
  done
  for b in messaging-server coordinator persister; do build_image "$b" "$ctx"; done
}

case "${1:-}" in
  base) build_base ;;
  infra) build_infra ;;
  image) build_image "${2:?name}" "${3:?context dir}" ;;
  services) build_services "${2:?binary dir}" ;;
  *) die "usage: scripts/images.sh base|infra|services BINDIR" ;;
esac
