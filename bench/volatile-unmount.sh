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
# (its stall); "none" is the same writer alone (its longest write over the
# whole GiB; the volatile mount is unmounted after it).
#
#   sudo unshare -m --propagation private bench/volatile-unmount.sh [OVL] [RUNS] [DIR] [GAP]
#
# GAP is the writer's least time between two 1 MiB writes, in ms (default
# 4: about 4 s for the GiB, so it still writes during what is measured; 0:
# as fast as it can, so that up to the whole GiB is dirty when it starts).
# "sync" is the part of the unmount the daemon spent syncing, from its log.
#
# DIR (default: a new directory under /var/tmp) is on the filesystem under
# test. A private mount namespace: a namespace that another process copies
# while a FUSE mount exists keeps that mount, and its daemon, alive.
set -euo pipefail
ovl=${1:-ovl}
runs=${2:-3}
base=${3:-/var/tmp}
gap=${4:-4}
dir=$(mktemp -d "$base/volatile-unmount.XXXXXX")
trap 'umount "$dir/m" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"

# writer.py FILE LOG GO GAP: writes 1 GiB to FILE in 1 MiB write()s, at
# most one every GAP ms, logging "start end" (epoch seconds) per write to
# LOG; creates GO after 256 MiB.
cat >writer.py <<'PY'
import os, sys, time
path, logp, go = sys.argv[1:4]
gap = float(sys.argv[4]) / 1000
buf = b"\1" * (1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
out = []
t0 = time.time()
for i in range(1024):
    d = t0 + i * gap - time.time()
    if d > 0:
        time.sleep(d)
    s = time.time()
    os.write(fd, buf)
    out.append((s, time.time()))
    if i == 255:
        open(go, "w").close()
os.close(fd)
with open(logp, "w") as f:
    for s, e in out:
        f.write(f"{s} {e}\n")
PY

# files.py DIR: 1000 files of 100 KiB in DIR, from one process.
cat >files.py <<'PY'
import os, sys
blk = os.urandom(100 << 10)
for i in range(1000):
    with open(os.path.join(sys.argv[1], "f%03d" % i), "wb") as f:
        f.write(blk)
PY

# maxstall LOG FROM TO: longest write (ms) that overlaps [FROM, TO].
maxstall() {
	awk -v a="$2" -v b="$3" '$2 >= a && $1 <= b { d = ($2 - $1) * 1000; if (d > m) m = d } END { printf "%.1f", m }' "$1"
}
now() { date +%s.%N; }

run() { # run MODE
	local mode=$1 s e stall
	rm -rf L U W m other go log dlog
	mkdir -p L U W m
	echo lower >L/f
	"$ovl" mount -o lowerdir=L,upperdir=U,workdir=W,volatile --log dlog m
	python3 files.py m
	sync -f . # earlier runs' dirty data out of the way (not timed)
	python3 writer.py other log go "$gap" &
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
		echo "$mode: the unmount left the volatile marker" >&2
		exit 1
	fi
	if [ "$mode" = none ]; then
		stall=$(maxstall log 0 1e18)
	else
		stall=$(maxstall log "$s" "$e")
	fi
	local synced
	synced=$(sed -n 's/.*changed objects in \([0-9.]*\) s.*/\1/p' dlog)
	printf '%-7s %7.3f s   longest 1 MiB write of the other writer meanwhile: %7s ms' "$mode" "$(echo "$e - $s" | bc)" "$stall"
	[ "$mode" = umount ] && printf '   (sync %s s)' "$synced"
	echo

}
echo "filesystem: $(findmnt -n -o SOURCE,FSTYPE -T .)  ovl: $("$ovl" --version)  writer gap: $gap ms"
for r in $(seq "$runs"); do
	run none
	run umount
	run syncfs
done
