#!/bin/bash
# Regenerate the bundled sample trace sets (traces/*) on one Linux machine: QEMU under TCG, a loop device,
# the trace lab's guest kernel + initramfs. Root is required (losetup, tracefs). See README.md beside this file.
#
#   traces/lab/run-all.sh [OUTDIR] [SET...]      default OUTDIR ./traces-new, default SET: all 17
#
# The recorder is the trace lab (shared/lab: capture.py, analyze.py, build-guest.sh, init, wl.c), which also
# records the ground truth kept in each set's manifest.json. Point LAB at it (default: ../../../shared/lab
# relative to this script, i.e. the shared/ folder next to the project). Seeds fix each guest workload exactly;
# timings, pids and device numbers differ from run to run.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LAB=${LAB:-$(cd "$HERE/../../../shared/lab" 2>/dev/null && pwd || true)}
[ -n "$LAB" ] && [ -f "$LAB/capture.py" ] || { echo "set LAB=/path/to/shared/lab (capture.py not found)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (losetup, tracefs)" >&2; exit 2; }
D=${1:-./traces-new}; shift || true
WANT=" $* "
export LAB_CACHE=${LAB_CACHE:-/var/tmp/lab-cache}
[ -f "$LAB_CACHE/initramfs.gz" ] || "$LAB"/build-guest.sh
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
cap() {  # cap SETNAME SCENARIO ARGS...   (every bundled set was recorded with --set dev)
  local name=$1 sc=$2; shift 2
  [ "$WANT" = "  " ] || [[ "$WANT" == *" $name "* ]] || return 0
  echo "== $name: capture.py $sc $D/$name --set dev $*"
  rm -rf "${LAB_CACHE:?}/run/$name"   # a work dir left by an interrupted run makes capture.py fail
  python3 "$LAB"/capture.py "$sc" "$D/$name" --set dev "$@"
}
# the first seven (shared/lab/run-all.sh)
cap raw-none-threads      raw-none-threads      --seed 7001 --ops 160 --maxkb 128 --flush-every 5
cap raw-unsafe            raw-unsafe            --seed 7002 --ops 140 --flush-every 4
cap ext4-writeback        ext4-writeback        --seed 7003 --ops 150 --files 6
cap migrate-none          migrate-none          --seed 7004 --ops 260 --sleep-us 25000 --mig-delay 2.0
cap qcow2file-none        qcow2file-none        --seed 7011 --ops 180 --maxkb 32 --flush-every 6
cap raw-none-bare         raw-none-threads      --seed 7013 --ops 150 --flush-every 5 --name raw-none-bare --no-msg-timestamp
cap raw-overlap-none      raw-overlap-none      --seed 7032 --ops 180 --writers 2 --region-kb 48 --maxkb 24 --flush-every 5
# the nine recorded later (cache modes, io_uring, migration with writeback, faults, an image file with writeback)
cap raw-writethrough      raw-writethrough      --seed 7101 --ops 120 --flush-every 5
cap raw-directsync        raw-directsync        --seed 7102 --ops 120 --flush-every 5
cap raw-none-iouring      raw-none-iouring      --seed 7103 --ops 140 --flush-every 5
cap ext4-unsafe           ext4-unsafe           --seed 7104 --ops 120 --files 6
cap migrate-writeback     migrate-writeback     --seed 7105 --ops 240 --sleep-us 25000 --mig-delay 2.0
cap splitbrain-none       splitbrain-none       --seed 7106 --ops 160
cap migrate-resume-source migrate-resume-source --seed 7107 --ops 240 --sleep-us 25000 --mig-delay 2.0
cap rawfile-writeback     rawfile-writeback     --seed 7108 --ops 140
cap raw-writeback         raw-writeback         --seed 7109 --ops 140 --flush-every 5
# QEMU's simple trace backend (binary): a QEMU built with it first in PATH (build-qemu-simple.sh), the lab's
# default parameters (--set sample, seed 1); the trace is renamed and its trace-events-all put beside it
if [ "$WANT" = "  " ] || [[ "$WANT" == *" raw-none-simple "* ]]; then
  QBIN=$("$HERE"/build-qemu-simple.sh | tail -1)
  rm -rf "${LAB_CACHE:?}/run/raw-none-simple"
  PATH="$QBIN:$PATH" python3 "$LAB"/capture.py raw-none-threads "$D/raw-none-simple" --name raw-none-simple
  mv "$D/raw-none-simple/qemu-vm.log.xz" "$D/raw-none-simple/qemu-vm.trace.xz"
  xz -9 -c "$(dirname "$QBIN")"/qemu-7.2.0/build/trace/trace-events-all > "$D/raw-none-simple/trace-events-all.xz"
  sed -i 's|^path = "qemu-vm.log.xz"$|path = "qemu-vm.trace.xz"\nformat = "qemu-simple"|' "$D/raw-none-simple/traceset.toml"
fi
# (its manifest.json then says so in qemu_log_format and ground_truth.qemu, edited by hand)
python3 "$LAB"/analyze.py --index "$D"
du -sh "$D"
echo "check them: for s in $D/*/; do writeorder check \$s; done"
