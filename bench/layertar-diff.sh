#!/usr/bin/env bash
# Times "ovl diff" of an upper layer against "tar -c" of the merged view of
# the same layers, through ovl's FUSE mount and through the kernel's
# overlayfs: 20,000 files of about 10 KiB in 200 directories (201 MiB) in
# the upper, a small lower; warm page cache; every output through a pipe
# (GNU tar does not read file data when it writes to /dev/null itself).
#
#   sudo unshare -m --propagation private bench/layertar-diff.sh [OVL] [RUNS]
#
# A private mount namespace: a namespace that another process copies while
# a FUSE mount exists keeps that mount, and its daemon, alive after umount.
set -euo pipefail
ovl=${1:-ovl}
runs=${2:-5}
dir=$(mktemp -d)
trap 'umount "$dir/M" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
mkdir -p L/base U W M
head -c 10485 /dev/urandom >blk
for i in $(seq 0 99); do head -c 1000 /dev/urandom >"L/base/f$i"; done
for d in $(seq -w 0 199); do
	mkdir "U/d$d"
	for f in $(seq -w 0 99); do head -c $((10485 - 10#$f % 7)) blk >"U/d$d/f$f"; done
done
t() {
	local s e
	s=$(date +%s.%N)
	sh -c "$1" >/dev/null 2>&1
	e=$(date +%s.%N)
	echo "$e - $s" | bc
}
echo "upper: $(find U -type f | wc -l) files, $(du -sb U | cut -f1) bytes"
for i in $(seq "$runs"); do
	d=$(t "$ovl diff -o lowerdir=L,upperdir=U --compress none | cat >/dev/null")
	dz=$(t "$ovl diff -o lowerdir=L,upperdir=U --compress gzip | cat >/dev/null")
	"$ovl" mount -o lowerdir=L,upperdir=U,workdir=W M
	f=$(t "tar -C M --xattrs -cf - . | cat >/dev/null")
	"$ovl" umount M
	mount -t overlay overlay -o lowerdir=L,upperdir=U,workdir=W M
	k=$(t "tar -C M --xattrs -cf - . | cat >/dev/null")
	kz=$(t "tar -C M --xattrs -czf - . | cat >/dev/null")
	umount M
	echo "run $i: ovl diff ${d}s, gzip ${dz}s; tar of the ovl mount ${f}s; tar of the kernel overlay ${k}s, gzip ${kz}s"
done
