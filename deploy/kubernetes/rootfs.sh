#!/bin/sh
# Assembles the container image's root filesystem in DEST: the portguard
# binary and exactly the shared libraries `ldd` names for it (glibc, the
# loader, libgcc_s), nothing else: no shell, no package manager. Used by the
# Dockerfile's build stage and by `cargo xtask image`, so both ship the same.
#   rootfs.sh BINARY DEST
set -eu
bin=$1
dest=$2
mkdir -p "$dest/usr/bin" "$dest/etc/portguard" "$dest/run/portguard" "$dest/var/lib/portguard"
cp "$bin" "$dest/usr/bin/portguard"
chmod 0755 "$dest/usr/bin/portguard"
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
	mkdir -p "$dest$(dirname "$lib")"
	cp -L "$lib" "$dest$lib"
done
