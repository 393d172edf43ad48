#!/usr/bin/env bash
# Builds Debian's own luajit2 source package as a static library with
# LUAJIT_ENABLE_CHECKHOOK, so compiled traces check for hooks at every loop
# and a batch past its deadline can be stopped even inside `while true do end`
# (docs/internals.md, "Budgets"). The source comes from Debian through
# `apt-get source`, matching the installed libluajit2-5.1-dev; nothing of it
# is kept in the repository. The result is cached in OUT:
#
#   OUT/libluajit.a   OUT/lj_init.o   OUT/include/*.h   OUT/VERSION
#
# lj_init.o is linked as an object beside the archive, as LuaJIT's own
# Makefile links its luajit binary (TARGET_O= lj_init.o $(LUAJIT_A)): it is
# OpenResty's constructor that reads the CPU flags and picks the SSE4.2
# CRC32 string hash. The archive does not hold it, and nothing refers to it,
# so without it every string is hashed by the portable fallback and a
# normal job ran 20-30% slower than on Debian's shared libluajit (which
# has it as lj_init_dyn.o); docs/internals.md, "Budgets".
#
# usage: tools/luajit-checkhook.sh OUT
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
version=$(dpkg-query -W -f='${Version}' libluajit2-5.1-dev 2>/dev/null || true)
if [ -z "$version" ]; then
    echo "luajit-checkhook: libluajit2-5.1-dev is not installed (make deps)" >&2
    exit 1
fi
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
stamp="$version checkhook lj_init prefix=/usr multilib=lib/$multiarch"
if [ -f "$out/libluajit.a" ] && [ -f "$out/lj_init.o" ] && [ "$(cat "$out/VERSION" 2>/dev/null)" = "$stamp" ]; then
    touch "$out/libluajit.a" "$out/lj_init.o" # newer than this script: make stops asking
    exit 0
fi

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

src=$(mktemp -d "${TMPDIR:-/tmp}/ember-luajit.XXXXXX")
trap 'rm -rf "$src"' EXIT
cd "$src"
# apt-get source needs a deb-src line; add Debian's own next to the deb one.
if ! apt-get source --download-only "luajit2=$version" >/dev/null 2>&1; then
    list=/etc/apt/sources.list.d/ember-deb-src.sources
    if [ ! -f "$list" ]; then
        # the mirror the deb lines already use (a local one, in an offline image)
        mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources \
                     2>/dev/null | grep -v security | head -1 || true)
        [ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
                     /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 || true)
        [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
        echo "luajit-checkhook: adding a deb-src line for $mirror in $list"
        . /etc/os-release
        sudo_if_needed tee "$list" >/dev/null <<SRC
Types: deb-src
URIs: $mirror
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    sudo_if_needed apt-get update -qq
fi
apt-get source "luajit2=$version" >/dev/null 2>&1 || apt-get source "luajit2=$version"
dir=$(find . -maxdepth 1 -type d -name 'luajit2-*' | head -1)
echo "luajit-checkhook: building $dir with -DLUAJIT_ENABLE_CHECKHOOK"
# PREFIX and MULTILIB as debian/rules sets them: the same package.path and
# package.cpath as Debian's luajit, so jobs find lua-cjson, lua-socket, ...
# The rest is LuaJIT's own (-O2 -fomit-frame-pointer, as Debian's build):
# nothing of the calling make's command line (MAKEFLAGS: `make CFLAGS=-O0`,
# the sanitizer builds' SAN=...) or of the environment's CFLAGS reaches it.
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CFLAGS -u LDFLAGS -u CPPFLAGS make -C "$dir/src" -j"$(nproc)" amalg BUILDMODE=static PREFIX=/usr MULTILIB="lib/$multiarch" \
    XCFLAGS="-DLUAJIT_ENABLE_CHECKHOOK" Q= E=@: >"$src/build.log" 2>&1 \
    || { tail -30 "$src/build.log" >&2; exit 1; }
mkdir -p "$out/include"
cp "$dir/src/libluajit.a" "$out/libluajit.a"
cp "$dir/src/lj_init.o" "$out/lj_init.o"
cp "$dir/src/lua.h" "$dir/src/lualib.h" "$dir/src/lauxlib.h" "$dir/src/luaconf.h" \
   "$dir/src/lua.hpp" "$dir/src/luajit.h" "$out/include/"
echo "$stamp" > "$out/VERSION"
