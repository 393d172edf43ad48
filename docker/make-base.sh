#!/usr/bin/env bash
# Makes the local Debian base image (default ember-base:bookworm) with
# debootstrap and `docker import`, for machines that cannot reach Docker
# Hub: every offline image (docker/docker-compose.offline.yml) builds FROM
# it. Needs root and a running dockerd; installs debootstrap (and docker.io)
# from Debian where missing. Does nothing when the image exists already;
# FORCE=1 makes it again.
#
#   docker/make-base.sh [IMAGE]          (make docker-base)
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DEBIAN_SUITE (default bookworm).
set -euo pipefail

image=${1:-ember-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${DEBIAN_SUITE:-bookworm}

. "$(dirname "${BASH_SOURCE[0]}")/need.sh"
need docker:docker.io
docker info >/dev/null 2>&1 || {
    echo "docker-base: no dockerd answers (start one: \`dockerd &\` as root, or your system's service)" >&2; exit 1; }
if [ -z "${FORCE:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "docker-base: $image exists (FORCE=1 makes it again)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "docker-base: debootstrap needs root" >&2; exit 1; }
need debootstrap:debootstrap

root=$(mktemp -d /var/tmp/ember-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "docker-base: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# As Debian's own slim images: no documentation, manual pages or
# translations, now or from later installs; no package cache or lists.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
EOF
# No service starts while an image builds (there is no init to run it).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
security=${mirror%/debian}/debian-security
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,lintian}/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
       "$root"/var/log/* "$root"/tmp/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

tar --numeric-owner -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
echo "docker-base: $image, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
