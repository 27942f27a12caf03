#!/usr/bin/env bash
# What a reusable volatile mount costs at its end (issue 19): a volatile ovl
# mount writes 100 MiB in 1000 files (no fsync), and then, while another
# process writes 1 GiB to the same filesystem, either
#   umount: "ovl umount" of the volatile mount, which fsyncs only the
#           objects that mount changed and removes its marker, or
#   syncfs: "sync -f" (syncfs(2)) of that filesystem, what making the
#           upper reusable takes without ovl (the seed thread's option 2),
# starting when the other writer has written 256 MiB. It prints the time
# of each, and the other writer's longest single 1 MiB write() during it
# (its stall) against its longest one with nothing else going on.
#
#   sudo unshare -m --propagation private bench/volatile-unmount.sh [OVL] [RUNS] [DIR]
#
# DIR (default: a new directory under /var/tmp) is on the filesystem under
# test. A private mount namespace: a namespace that another process copies
# while a FUSE mount exists keeps that mount, and its daemon, alive.
set -euo pipefail
ovl=${1:-ovl}
runs=${2:-3}
base=${3:-/var/tmp}
dir=$(mktemp -d "$base/volatile-unmount.XXXXXX")
trap 'umount "$dir/m" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"

# writer FILE LOG GO: writes 1 GiB to FILE in 1 MiB write()s, logging
# "start end" (monotonic seconds) per write to LOG; creates GO after 256 MiB.
cat >writer.py <<'EOF'
import os, sys, time
path, logp, go = sys.argv[1:4]
buf = b"\1" * (1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
out = []
for i in range(1024):
    s = time.monotonic()
    os.write(fd, buf)
    out.append((s, time.monotonic()))
    if i == 255:
        open(go, "w").close()
os.close(fd)
with open(logp, "w") as f:
    for s, e in out:
        f.write(f"{s} {e}\n")
EOF

# maxstall LOG FROM TO: longest write (ms) that overlaps [FROM, TO].
maxstall() {
	awk -v a="$2" -v b="$3" '$2 >= a && $1 <= b { d = ($2 - $1) * 1000; if (d > m) m = d } END { printf "%.1f", m }' "$1"
}
now() { python3 -c 'import time; print(time.monotonic())'; }

run() { # run MODE
	local mode=$1 s e
	rm -rf L U W m other go log
	mkdir -p L U W m
	echo lower >L/f
	"$ovl" mount -o lowerdir=L,upperdir=U,workdir=W,volatile m
	head -c $((100 << 10)) /dev/urandom >blk
	for i in $(seq -w 0 999); do cp blk "m/f$i"; done
	sync -f . # earlier runs' dirty data out of the way (not timed)
	python3 writer.py other log go &
	local wpid=$!
	while [ ! -e go ]; do sleep 0.01; done
	s=$(now)
	case $mode in
	umount) "$ovl" umount m ;;
	syncfs) sync -f . ;;
	none) ;;
	esac
	e=$(now)
	wait $wpid
	[ "$mode" = umount ] || "$ovl" umount m
	if [ -e W/work/incompat ]; then
		[ "$mode" = umount ] && { echo "umount left the marker" >&2; exit 1; }
	fi
	local stall
	if [ "$mode" = none ]; then
		stall=$(maxstall log 0 1e18) # the whole GiB, nothing else going on
	else
		stall=$(maxstall log "$s" "$e")
	fi
	printf '%-7s %8.3f s   longest 1 MiB write of the other writer meanwhile: %8s ms\n' "$mode" "$(echo "$e - $s" | bc)" "$stall"
}
echo "filesystem: $(findmnt -n -o SOURCE,FSTYPE -T .)  ovl: $("$ovl" --version)"
for r in $(seq "$runs"); do
	run none
	run umount
	run syncfs
done
