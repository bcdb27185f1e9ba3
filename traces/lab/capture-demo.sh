#!/bin/bash
# Record one trace set of a real VM with `writeorder capture` alone (no lab orchestrator): the way you would on a
# production host, but with a lab VM so that it runs anywhere (QEMU under TCG, the lab guest kernel + initramfs
# whose /init runs a seeded workload, blktraces /dev/vda and powers off; a loop device as the VM disk).
#
#   traces/lab/capture-demo.sh OUTDIR [CACHE] [SEED] [OPS]      e.g. capture-demo.sh /tmp/demo none 7201 120
#
# Needs root, qemu-system-x86_64, and $LAB_CACHE/{vmlinuz,initramfs.gz} (shared/lab/build-guest.sh).
# WO: how to run writeorder (default: `writeorder`, or the project's venv if present).
# QEMU_TRACE=simple: the qemu-system-x86_64 first in PATH has the simple trace backend (build-qemu-simple.sh);
# its binary trace goes to -trace file= instead of the log backend's -D file.
set -euo pipefail
OUT=${1:?usage: capture-demo.sh OUTDIR [CACHE] [SEED] [OPS]}
CACHE=${2:-none}; SEED=${3:-7201}; OPS=${4:-120}
HERE=$(cd "$(dirname "$0")" && pwd)
LAB_CACHE=${LAB_CACHE:-/var/tmp/lab-cache}
if [ -z "${WO:-}" ]; then
  if [ -x "$HERE/../../.venv/bin/python" ]; then WO="$HERE/../../.venv/bin/python -m toolkit.cli"; else WO=writeorder; fi
fi
cd "$HERE/../.."   # so that `python -m toolkit.cli` finds the package
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for f in vmlinuz initramfs.gz; do [ -f "$LAB_CACHE/$f" ] || { echo "no $LAB_CACHE/$f: run shared/lab/build-guest.sh" >&2; exit 2; }; done
[ ! -e "$OUT" ] || { echo "$OUT exists" >&2; exit 2; }
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
W=$(mktemp -d /var/tmp/wo-demo.XXXXXX); mkdir "$W/out"
truncate -s 128M "$W/disk.img"
LOOP=$(losetup -f --show "$W/disk.img")
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; losetup -d "$LOOP" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
# lab /init parameters: lab.args = seed,ops,region_mb,maxkb,flush_every,pct_direct,pct_dsync,pct_read,sleep_us
qemu-system-x86_64 -name guest=vm,process=qemu-vm -machine pc -accel tcg -m 256 -smp 2 -nodefaults -display none \
  -serial "file:$W/serial.log" -monitor none -no-reboot \
  -kernel "$LAB_CACHE/vmlinuz" -initrd "$LAB_CACHE/initramfs.gz" \
  -append "console=ttyS0 quiet lab.mode=raw lab.args=$SEED,$OPS,64,64,5,20,5,5,10000 lab.tag=demo lab.bt=1 lab.presleep=3" \
  -drive "file=$LOOP,format=raw,if=none,id=vda0,cache=$CACHE,aio=threads" -device virtio-blk-pci,drive=vda0,id=vblk0 \
  -virtfs "local,path=$W/out,mount_tag=out,security_model=none,id=fs0" \
  -qmp "unix:$W/qmp.sock,server=on,wait=off" -msg timestamp=on \
  $([ "${QEMU_TRACE:-log}" = simple ] && echo "-trace file=$W/qemu.trace" || echo "-D $W/qemu.log") &
QPID=$!
for _ in $(seq 100); do [ -S "$W/qmp.sock" ] && break; sleep 0.1; done
# host side: until the guest powers off (or 120 s); the guest's /init records its own blktrace meanwhile
$WO capture host --qmp "$W/qmp.sock" --duration 120 -o "$OUT"
wait "$QPID" || true; QPID=
# guest side: the lab /init dumped guest.tar over 9p (a real guest: `writeorder capture guest` prints the script)
$WO capture guest --import "$W/out/guest.tar" "$OUT"
$WO check "$OUT" || true
