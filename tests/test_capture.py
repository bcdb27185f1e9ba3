"""writeorder capture: the pieces (no root needed) and a real capture of a real VM (root, QEMU, the lab kernel).

The real test starts a VM the way the trace lab does (TCG, the lab's kernel and initramfs, a loop device, QMP on a
unix socket, ``-msg timestamp=on``, ``-D logfile``), records it with ``writeorder capture host --qmp``, brings the
guest's own blktrace in with ``writeorder capture guest --import`` and runs ``writeorder check`` on the result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from toolkit import capture, traceset
from toolkit import capture_guest as CG
from toolkit import capture_host as CH
from toolkit import capture_qemu as CQ
from toolkit.capture_host import CaptureError

ROOT = Path(__file__).resolve().parent.parent
LAB_CACHE = Path(os.environ.get("LAB_CACHE", "/var/tmp/lab-cache"))


# ------------------------------------------------------------------------------------------- command lines
def test_parse_cmdline_drive_and_options():
    argv = ["qemu-system-x86_64", "-name", "guest=web1,process=qemu-web1", "-msg", "timestamp=on",
            "-D", "/var/log/q.log", "-qmp", "unix:/run/web1.qmp,server=on,wait=off",
            "-drive", "file=/dev/vg/web1,format=raw,if=none,id=d0,cache=none,aio=io_uring",
            "-drive", "file=/srv/img/a,,b.qcow2,format=qcow2,if=none,id=d1,cache.direct=on",
            "-chardev", "socket,id=mon1,path=/run/mon1.sock,server=on,wait=off", "-mon", "chardev=mon1,mode=control"]
    c = CQ.parse_cmdline(argv)
    assert c.name == "web1" and c.msg_timestamp and c.log_file == "/var/log/q.log"
    assert c.qmp_sockets == ["/run/web1.qmp", "/run/mon1.sock"]
    d0, d1 = c.disks
    assert (d0.name, d0.file, d0.format, d0.cache, d0.aio) == ("d0", "/dev/vg/web1", "raw", "none", "io_uring")
    assert (d1.file, d1.cache) == ("/srv/img/a,b.qcow2", "none")  # ',,' escapes a comma; writeback+direct = none


def test_parse_cmdline_blockdev_json_and_libvirt_style():
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "guest=db,debug-threads=on",
            "-blockdev", json.dumps({"driver": "file", "filename": "/var/lib/libvirt/images/db.qcow2",
                                     "node-name": "libvirt-1-storage", "cache": {"direct": True, "no-flush": False}}),
            "-blockdev", json.dumps({"node-name": "libvirt-1-format", "driver": "qcow2", "file": "libvirt-1-storage",
                                     "cache": {"direct": True, "no-flush": False}}),
            "-device", "virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0,write-cache=on",
            "-msg", "timestamp=on"]
    c = CQ.parse_cmdline(argv)
    (d,) = c.disks
    assert (d.name, d.file, d.format, d.cache) == ("virtio-disk0", "/var/lib/libvirt/images/db.qcow2", "qcow2", "none")
    assert c.msg_timestamp and c.log_file is None


def test_split_cmdline_file_forms():
    assert CQ.split_cmdline("qemu -drive file=/a\\\n -m 1G") == ["qemu", "-drive", "file=/a", "-m", "1G"]
    assert CQ.split_cmdline("qemu\x00-m\x00256\x00") == ["qemu", "-m", "256"]


@pytest.mark.parametrize("wb,direct,nf,name", [(True, False, False, "writeback"), (True, True, False, "none"),
                                               (False, False, False, "writethrough"), (False, True, False, "directsync"),
                                               (True, False, True, "unsafe"), (None, None, None, None)])
def test_cache_name(wb, direct, nf, name):
    assert CQ.cache_name(wb, direct, nf) == name


def test_domain_xml():
    xml = """<domain type='kvm'><name>vm1</name><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' io='native'/>
        <source file='/var/lib/libvirt/images/vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdb'/>
        <target dev='vdb' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    </devices></domain>"""
    name, disks = CQ.parse_domain_xml(xml)
    assert name == "vm1"
    assert [(d.name, d.file, d.format, d.cache) for d in disks] == [
        ("vda", "/var/lib/libvirt/images/vm1.qcow2", "qcow2", "none"), ("vdb", "/dev/sdb", "raw", None)]
    with pytest.raises(CaptureError, match="not XML"):
        CQ.parse_domain_xml("<domain>")


def test_query_block():
    blocks = [{"device": "", "qdev": "/machine/peripheral/vblk0/virtio-backend",
               "inserted": {"file": 'json:{"driver": "raw", "file": {"driver": "file", "filename": "/i/a.img"}}',
                            "drv": "raw", "node-name": "n1", "ro": False,
                            "cache": {"writeback": True, "direct": True, "no-flush": False}, "image": {}}},
              {"device": "ide1-cd0", "qdev": "/machine/unattached/device[23]"}]
    (d,) = CQ.disks_from_query_block(blocks)
    assert (d.name, d.file, d.format, d.cache) == ("vblk0", "/i/a.img", "raw", "none")


def test_events_file(tmp_path):
    f = tmp_path / "ev.txt"
    f.write_text("# comment\nvirtio_blk_*\n\nrunstate_set  # trailing\n")
    assert CQ.read_events_file(str(f)) == ["virtio_blk_*", "runstate_set"]
    f.write_text("virtio_blk_*; rm -rf /\n")
    with pytest.raises(CaptureError, match="line 1"):
        CQ.read_events_file(str(f))
    for pat in ("virtio_blk_*", "blk_co_p*", "bdrv_co_p*", "thread_pool_*", "luring_*", "laio_*", "runstate_set",
                "migrate_set_state", "vm_stop_flush_all", "qmp_enter_*"):
        assert pat in CQ.DEFAULT_EVENTS


# --------------------------------------------------------------------------------------------- host pieces
def test_mountinfo_and_mount_of(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"
        "40 22 259:3 / /srv/vm\\040images rw,relatime shared:2 - xfs /dev/nvme0n1p3 rw\n"
        "41 22 0:45 / /mnt/btr rw - btrfs /dev/sdb1 rw\n")
    table = CH.mounts(str(mi))
    assert [m.mountpoint for m in table] == ["/", "/srv/vm images", "/mnt/btr"]
    m = CH._mount_of("/srv/vm images/a.qcow2", os.makedev(259, 3), table)
    assert (m.fstype, m.source) == ("xfs", "/dev/nvme0n1p3")
    m = CH._mount_of("/mnt/btr/x.img", os.makedev(0, 45), table)
    assert m.fstype == "btrfs"


def test_resolve_regular_file_and_errors(tmp_path):
    f = tmp_path / "disk.img"
    f.write_bytes(b"\0" * 4096)
    try:
        r = CH.resolve_device(str(f))
    except CaptureError as e:  # tmpfs / overlay test folders have no block device: the message says what to do
        assert "--device" in str(e)
    else:
        assert r.image_file == str(f.resolve()) and r.device.major > 0
    with pytest.raises(CaptureError, match="No such file"):
        CH.resolve_device(str(tmp_path / "missing.img"))


def test_clock_pair_is_a_sandwich():
    p = CH.best_clock_pair("x")
    assert p["uncertainty_ns"] >= 0 and p["mono_ns"] > 0
    assert abs((p["realtime_ns"] - p["mono_ns"]) - (time.time_ns() - time.monotonic_ns())) < 50_000_000


def test_thread_sampler_own_process(tmp_path):
    s = CH.ThreadSampler(0.01)
    s.add(os.getpid(), "single")
    n = s.write(tmp_path / "t.tsv")
    lines = (tmp_path / "t.tsv").read_text().splitlines()
    assert n >= 1 and lines[0].split("\t")[:3] == ["tid", "pid", "role"]
    assert any(line.split("\t")[0] == str(os.getpid()) for line in lines[1:])


# --------------------------------------------------------------------------------------- guest + manifest
def test_guest_script_is_valid_sh(tmp_path):
    text = CG.script("/dev/vdb", "/dev/shm/wo", 30)
    assert 'DEV=${1:-/dev/vdb}' in text and "blktrace -d" in text and "/proc/timer_list" in text
    f = tmp_path / "g.sh"
    f.write_text(text)
    assert subprocess.run(["sh", "-n", str(f)]).returncode == 0
    with pytest.raises(CaptureError):
        CG.script("/dev/vda; reboot")


def _fake_capture(tmp_path: Path) -> Path:
    out = tmp_path / "cap"
    out.mkdir()
    (out / "host.blktrace.0").write_bytes(b"")
    (out / "qemu-vm.log").write_text("100@1795646801.013374:virtio_blk_handle_write vdev 0x1 req 0x2 sector 8 "
                                     "nsectors 8\n")
    (out / "host-threads.tsv").write_text("tid\tpid\trole\n100\t100\tsingle\n")
    info = {"hostname": "h", "name": "cap", "recorder": "ftrace-blk", "host_files": "host.blktrace.*",
            "host_devices": {"loop0": {"path": "/dev/loop0", "dev": "7,0", "write_cache": "write back", "fua": "0"}},
            "qemu": [{"role": "single", "pid": 100, "guest": "vm", "version": "7.2.22", "msg_timestamp": True,
                      "log_destination": "the -D log file /x", "log_file": "qemu-vm.log"}],
            "threads_file": "host-threads.tsv",
            "disks": [{"name": "vda0", "guest": "vm", "file": "/dev/loop0", "format": "raw", "host_device": "7,0",
                       "host_device_name": "loop0", "mapping": [{"kind": "raw", "offset": 0}], "cache": "none",
                       "write_cache": "write back", "fua": "0"}],
            "clock_pairs": [{"label": "capture_start", "mono_ns": 5, "realtime_ns": 10, "uncertainty_ns": 1}]}
    (out / "capture.json").write_text(json.dumps(info))
    capture.write_traceset(out, info)
    return out


def test_traceset_written_loads(tmp_path):
    out = _fake_capture(tmp_path)
    ts = traceset.load(out)
    assert [t.layer for t in ts.traces] == ["host-block", "qemu"]
    q = ts.traces_of("qemu")[0]
    assert (q.pid, q.threads, q.format) == (100, "host-threads.tsv", "qemu-log")
    (d,) = ts.disks
    assert (d.host_device, d.cache, d.mapping) == ("7,0", "none", [{"kind": "raw", "offset": 0}])
    assert [(c.a, c.b, c.a_ns, c.b_ns) for c in ts.clocks] == [("host:monotonic", "host:realtime", 5, 10)]


def test_simple_backend_trace_found_copied_whole_and_declared(tmp_path, monkeypatch):
    """A QEMU with the simple trace backend: its binary file (-trace file=, else trace-PID in its working
    directory) is found by its header, copied whole (header and event names first, whatever the offset at the
    start of the capture) with the trace-events-all of that QEMU beside it, and declared as qemu-simple."""
    from toolkit.parsers import qemu_simple

    names = {3: "virtio_blk_handle_write"}
    recs = [(3, 1000 + i, 42, [0x1, 0x2 + i, 8 * i, 8]) for i in range(50)]
    simple = tmp_path / "qemu.trace"
    qemu_simple.write(simple, names, recs)
    text = tmp_path / "qemu.log"
    text.write_text("100@1795646801.013374:virtio_blk_handle_write vdev 0x1 req 0x2 sector 8 nsectors 8\n")
    cmd = CQ.QemuCmdline([])
    cmd.trace_file = str(simple)
    d = CQ.log_destination(os.getpid(), cmd)
    assert d.simple and d.path == str(simple) and d.readable and "simple-backend" in d.description
    cmd.trace_file = str(text)  # 7.2's log backend writes its lines to -trace file= too
    assert not CQ.log_destination(os.getpid(), cmd).simple
    monkeypatch.chdir(tmp_path)  # no -trace file=: the simple backend writes trace-PID in QEMU's working directory
    shutil.copyfile(simple, tmp_path / f"trace-{os.getpid()}")
    d2 = CQ.log_destination(os.getpid(), CQ.QemuCmdline([]))
    assert d2.simple and d2.path == str(tmp_path / f"trace-{os.getpid()}")

    te_all = tmp_path / "te"
    te_all.write_text("virtio_blk_handle_write(void *vdev, void *req, uint64_t sector, size_t nsectors) \"x\"\n")
    out = tmp_path / "cap"
    out.mkdir()
    t = capture.Target(role="single", pid=None, cmd=None, log=d, log_start=simple.stat().st_size // 2,
                       trace_events=str(te_all))
    assert capture._copy_logs([t], out) == {"single": "qemu-vm.trace"}
    assert (out / "qemu-vm.trace").read_bytes() == simple.read_bytes()
    assert (out / "trace-events-all").read_text() == te_all.read_text()
    r = qemu_simple.parse(out / "qemu-vm.trace")  # finds the declarations beside it
    assert r.meta["trace_events"] == str(out / "trace-events-all")
    assert r.events["sector"].tolist() == [8 * i for i in range(50)] and len(r.rejects) == 0

    (tmp_path / "x").mkdir()
    info = json.loads((_fake_capture(tmp_path / "x").joinpath("capture.json")).read_text())
    info["qemu"][0]["log_file"] = "qemu-vm.trace"
    (out / "host.blktrace.0").write_bytes(b"")
    (out / "host-threads.tsv").write_text("tid\tpid\trole\n100\t100\tsingle\n")
    capture.write_traceset(out, info)
    (q,) = traceset.load(out).traces_of("qemu")
    assert q.format == "qemu-simple" and q.path == "qemu-vm.trace*"
    assert "simple trace backend" in (out / "traceset.toml").read_text()


def test_guest_import_adds_trace_and_device(tmp_path):
    out = _fake_capture(tmp_path)
    g = tmp_path / "g"
    g.mkdir()
    (g / "guest.blktrace.0").write_bytes(b"\x07\x74\x61\x65" + b"\0" * 44)
    (g / "guest-device.txt").write_text("device /dev/vda\nname vda\ndev 254:0\nwrite_cache write back\nfua 0\n")
    (g / "guest-clock.txt").write_text("# label mono r1 r2\nstarted 1000 2000 2010\n")
    tar = tmp_path / "g.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        for f in g.iterdir():
            t.add(f, arcname="./" + f.name)
    CG.import_guest(str(tar), str(out), log=lambda m: None)
    ts = traceset.load(out)
    assert [t.layer for t in ts.traces] == ["host-block", "qemu", "guest-block"]
    assert ts.disks[0].guest_device == "254,0"
    assert "vm:monotonic 1000 = vm:realtime 2005" in (out / "traceset.toml").read_text()
    with pytest.raises(CaptureError, match="capture.json"):
        CG.import_guest(str(tar), str(tmp_path), log=lambda m: None)


def test_cli_usage_errors(capsys):
    from toolkit import cli

    assert cli.main(["capture", "host", "-o", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "writeorder capture:" in err
    assert cli.main(["capture", "guest", "--device", "/dev/vda"]) == 0
    assert "blktrace -d" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ real capture
def _why_no_real_capture() -> str | None:
    if os.environ.get("WRITEORDER_SKIP_REAL_CAPTURE"):
        return "WRITEORDER_SKIP_REAL_CAPTURE is set"
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (tracefs, losetup, QMP of a VM)"
    for tool in ("qemu-system-x86_64", "losetup"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    for f in ("vmlinuz", "initramfs.gz"):
        if not (LAB_CACHE / f).is_file():
            return f"no lab guest {LAB_CACHE / f} (build it with shared/lab/build-guest.sh)"
    try:
        tr = CH.tracefs()
    except CaptureError as e:
        return str(e)
    cur = (tr / "current_tracer").read_text().strip()
    if cur != "nop":
        return f"ftrace is busy (current_tracer={cur}): another capture runs"
    if "blk" not in (tr / "available_tracers").read_text().split():
        return "no ftrace blk tracer in this kernel"
    return None


def _start_vm(work: Path, seed: int, cache: str = "none") -> tuple[subprocess.Popen, str]:
    """A lab VM: TCG, lab kernel + initramfs (its /init runs the seeded workload, dumps its guest blktrace over 9p
    and powers off), a loop device over a sparse file, QMP, -msg timestamp=on, -D logfile."""
    img = work / "disk.img"
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True,
                          text=True).stdout.strip()
    (work / "out").mkdir()
    # lab /init: lab.args = seed,ops,region_mb,maxkb,flush_every,pct_direct,pct_dsync,pct_read,sleep_us
    append = (f"console=ttyS0 quiet lab.mode=raw lab.args={seed},100,64,64,5,20,5,5,10000 lab.tag=capture-test "
              "lab.bt=1 lab.presleep=5")
    cmd = ["qemu-system-x86_64", "-name", "guest=vm,process=qemu-vm", "-machine", "pc", "-accel", "tcg",
           "-m", "256", "-smp", "2", "-nodefaults", "-display", "none", "-serial", f"file:{work / 'serial.log'}",
           "-monitor", "none", "-no-reboot", "-kernel", str(LAB_CACHE / "vmlinuz"),
           "-initrd", str(LAB_CACHE / "initramfs.gz"), "-append", append,
           "-drive", f"file={loop},format=raw,if=none,id=vda0,cache={cache},aio=threads",
           "-device", "virtio-blk-pci,drive=vda0,id=vblk0",
           "-virtfs", f"local,path={work / 'out'},mount_tag=out,security_model=none,id=fs0",
           "-qmp", f"unix:{work / 'qmp.sock'},server=on,wait=off", "-msg", "timestamp=on",
           "-D", str(work / "qemu.log")]
    with open(work / "qemu.err", "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return proc, loop


def _wo(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=ROOT, capture_output=True, text=True, **kw)


@pytest.mark.skipif(_why_no_real_capture() is not None, reason=_why_no_real_capture() or "")
def test_real_capture_of_a_real_vm(tmp_path):
    work = tmp_path / "vm"
    work.mkdir()
    proc, loop = _start_vm(work, seed=7201)
    try:
        sock = work / "qmp.sock"
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        assert sock.exists(), "QEMU did not create its QMP socket"
        tr = CH.tracefs()
        clock_before = (tr / "trace_clock").read_text()

        # 1. Ctrl-C: a short capture while the guest boots stops cleanly and still writes its manifest
        short = tmp_path / "short"
        p = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "capture", "host", "--qmp", str(sock),
                              "-o", str(short)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        if p.returncode == 2 and "ftrace is in use" in err:
            pytest.skip("ftrace is busy: another capture started meanwhile")
        assert p.returncode == 0, err
        assert "stopped (SIGINT)" in err
        assert traceset.load(short).traces_of("host-block")
        assert (tr / "current_tracer").read_text().strip() == "nop"  # ftrace given back
        assert (tr / "trace_clock").read_text() == clock_before

        # 2. the capture proper: until QEMU exits (the guest powers off after its workload) or 75 s
        out = tmp_path / "cap"
        r = _wo("capture", "host", "--qmp", str(sock), "--duration", "75", "-o", str(out), timeout=120)
        if r.returncode == 2 and "ftrace is in use" in r.stderr:
            pytest.skip("ftrace is busy: another capture started meanwhile")
        assert r.returncode == 0, r.stderr
        assert "stopped (qemu-exited)" in r.stderr, r.stderr
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["losetup", "-d", loop], check=False)

    info = json.loads((out / "capture.json").read_text())
    assert info["recorder"] in ("ftrace-blk", "blktrace") and info["lost_events"] == 0
    assert info["host_devices"][os.path.basename(loop)]["write_cache"] in ("write back", "write through")
    assert info["disks"][0]["cache"] == "none" and info["disks"][0]["mapping"] == [{"kind": "raw", "offset": 0}]
    assert info["cost"]["host_trace_bytes"] > 48 * 100  # at least 100 blk_io_trace records
    assert len(info["clock_pairs"]) >= 3
    threads = (out / "host-threads.tsv").read_text().splitlines()
    assert len(threads) > 2  # main thread + vCPU / worker threads
    qlog = (out / "qemu-vm.log").read_text()
    assert "virtio_blk_handle_write" in qlog and "blk_co_pwritev" in qlog

    # the guest's own blktrace (recorded by the lab /init, dumped over 9p) joins the set
    r = _wo("capture", "guest", "--import", str(work / "out" / "guest.tar"), str(out))
    assert r.returncode == 0, r.stderr

    ts = traceset.load(out)
    assert {t.layer for t in ts.traces} == {"host-block", "qemu", "guest-block"}
    r = _wo("check", str(out), "--json", "--no-cache", timeout=120)
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    cov = doc["coverage"]["vda0"]
    assert cov["guest_writes"] > 50 and cov["writes_carried_to_host"] == cov["guest_writes"]
    assert doc["inferred_cache"]["vda0"]["mode"] == "none"
    assert doc["summary"].get("flush-not-forwarded", 0) == 0
