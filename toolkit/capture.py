"""``writeorder capture host|guest``: record the traces writeorder needs, on a real host, with one command.

Host (as root, while the VM runs)::

    writeorder capture host --qmp /run/vm1.qmp [--disk vda] [--duration 60] -o capture/
    writeorder capture host --pid 4242 | --cmdline qemu.cmd | --domain-xml vm1.xml  ...

finds the block device beneath each VM disk (image file -> filesystem -> block device, or a block device
directly), records it with blktrace or, where debugfs is locked down, the ftrace blk tracer in binary mode (one
``host.blktrace.<cpu>`` per CPU), turns on QEMU's trace events over QMP (``trace-event-set-state``) and copies
the lines QEMU logged meanwhile, samples the host thread ids of each QEMU process, takes CLOCK_MONOTONIC /
CLOCK_REALTIME reference pairs, records the image mapping (``qemu-img map``, ``filefrag -v``) and the devices'
``queue/write_cache`` / ``queue/fua``, stops on Ctrl-C, after ``--duration`` or when QEMU exits, and writes
``traceset.toml`` and ``capture.json``.

Guest::

    writeorder capture guest [--device /dev/vda] [-o writeorder-guest.sh]     # the script to run in the guest
    writeorder capture guest --import writeorder-guest.tar.gz capture/       # bring its files into the set

Pieces: :mod:`toolkit.capture_host` (devices, recorders, clocks, threads), :mod:`toolkit.capture_qemu`
(QMP, command lines, libvirt XML, the log), :mod:`toolkit.capture_guest` (the guest script, import).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import capture_guest as CG
from toolkit import capture_host as CH
from toolkit import capture_qemu as CQ
from toolkit.capture_host import CaptureError

EXIT_USAGE = 2


def log(msg: str) -> None:
    print(f"capture: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- arguments
def host_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="writeorder capture host", description="Record host block traces, QEMU trace "
                                "events, thread ids, clock pairs and the image mapping of a running VM (as root).")
    src = p.add_argument_group("the VM (one of; --qmp and --pid may be repeated: migration source, then destination)")
    src.add_argument("--qmp", action="append", default=[], metavar="SOCKET", help="QEMU's QMP unix socket")
    src.add_argument("--pid", action="append", default=[], type=int, help="QEMU process id")
    src.add_argument("--cmdline", metavar="FILE", help="a file holding the QEMU command line (shell words, or "
                     "NUL-separated as in /proc/PID/cmdline)")
    src.add_argument("--domain-xml", metavar="FILE", help="a libvirt domain XML (virsh dumpxml DOMAIN)")
    p.add_argument("--disk", action="append", default=[], metavar="NAME",
                   help="only this disk (device id, libvirt target such as vda, node name or image file name); "
                   "default: every writable disk")
    p.add_argument("--device", metavar="/dev/X", help="trace this host device instead of the one found beneath the disk")
    p.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="capture folder (created; must be empty)")
    p.add_argument("--events", metavar="FILE", help="QEMU trace events to enable, one name or glob per line "
                   "(default: the built-in list of the events writeorder reads)")
    p.add_argument("--no-events", action="store_true", help="do not touch QEMU's trace events")
    p.add_argument("--leave-events-on", action="store_true", help="do not turn the events off again at the end")
    p.add_argument("--recorder", choices=["auto", "blktrace", "ftrace"], default="auto",
                   help="blktrace (debugfs) or the ftrace blk tracer (binary mode); auto: blktrace unless debugfs "
                   "is locked down or blktrace fails")
    p.add_argument("--buffer-kb", type=int, default=16384, help="ftrace ring buffer per CPU (KiB)")
    p.add_argument("--force", action="store_true", help="take over ftrace even if another tracer is set")
    p.add_argument("--linger", type=float, default=2.0, metavar="S",
                   help="keep tracing S seconds after every QEMU process exited (host writeback after exit)")
    p.add_argument("--thread-interval", type=float, default=0.02, metavar="S", help="thread id sampling period")
    p.add_argument("--clock-every", type=float, default=10.0, metavar="S", help="a clock reference pair every S s")
    p.add_argument("--name", help="trace set name (default: the output folder's name)")
    return p


def guest_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="writeorder capture guest", description="Print (or write) the shell script "
                                "that records the guest's virtual disk with blktrace; or --import its result.")
    p.add_argument("--device", default="/dev/vda", help="the guest's virtual disk (default /dev/vda)")
    p.add_argument("--out", default="/dev/shm/writeorder-guest", help="folder in the guest for the trace "
                   "(not on the traced disk; default a tmpfs)")
    p.add_argument("--duration", type=int, default=0, help="seconds (default: until Ctrl-C)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the script here instead of printing it")
    p.add_argument("--import", dest="import_", nargs=2, metavar=("GUEST_TAR_OR_DIR", "CAPTURE_DIR"),
                   help="add the guest's files to a host capture folder and its traceset.toml")
    p.add_argument("--guest", help="guest node name (default: the one the host capture used)")
    return p


def main(args) -> int:
    rest = list(getattr(args, "rest", []) or [])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        if args.side == "guest":
            return guest_main(guest_parser().parse_args(rest))
        return host_main(host_parser().parse_args(rest))
    except CaptureError as e:
        print(f"writeorder capture: {e}", file=sys.stderr)
        return EXIT_USAGE


def guest_main(a) -> int:
    if a.import_:
        CG.import_guest(a.import_[0], a.import_[1], guest=a.guest, log=log)
        return 0
    text = CG.script(a.device, a.out, a.duration)
    if a.output:
        Path(a.output).write_text(text)
        os.chmod(a.output, 0o755)
        log(f"wrote {a.output}: copy it into the guest and run it as root: sh {os.path.basename(a.output)}")
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """One QEMU process being captured."""

    role: str
    pid: int | None
    cmd: CQ.QemuCmdline | None
    qmp: CQ.QMP | None = None
    qmp_path: str | None = None
    disks: list[CQ.VmDisk] = field(default_factory=list)
    guest: str = "vm"
    log: CQ.LogDest | None = None
    log_start: int = 0
    trace_events: str | None = None  # simple backend: the trace-events-all of this QEMU (found while it runs)
    events_on: list[str] = field(default_factory=list)
    events_restore: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: str | None = None
    status: str | None = None


def _connect(path: str, transcript) -> CQ.QMP:
    return CQ.QMP(path, transcript=transcript)


def find_targets(a, transcript) -> list[Target]:
    n_src = sum(bool(x) for x in (a.qmp, a.pid, a.cmdline, a.domain_xml))
    if n_src != 1:
        raise CaptureError("name the VM with one of --qmp SOCKET, --pid PID, --cmdline FILE, --domain-xml FILE")
    targets: list[Target] = []
    count = len(a.qmp) or len(a.pid) or 1
    roles = ["single"] if count == 1 else ["source", "destination"] + [f"writer{i}" for i in range(2, count)]
    if a.qmp:
        for sock, role in zip(a.qmp, roles, strict=False):
            q = _connect(sock, transcript)
            pid = CQ.qmp_pid(q)
            cmd = CQ.parse_cmdline(CQ.proc_cmdline(pid)) if pid else None
            targets.append(Target(role, pid, cmd, qmp=q, qmp_path=sock))
    elif a.pid:
        for pid, role in zip(a.pid, roles, strict=False):
            argv = CQ.proc_cmdline(pid)
            if not CQ.is_qemu(argv):
                raise CaptureError(f"--pid {pid}: {argv[0] if argv else '?'} is not a QEMU process")
            targets.append(Target(role, pid, CQ.parse_cmdline(argv)))
    elif a.cmdline:
        try:
            text = Path(a.cmdline).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CaptureError(f"--cmdline {a.cmdline}: {e.strerror}") from None
        try:
            argv = CQ.split_cmdline(text.strip())
        except ValueError as e:
            raise CaptureError(f"--cmdline {a.cmdline}: {e}") from None
        cmd = CQ.parse_cmdline(argv)
        key = [d.file for d in cmd.disks if d.file]
        pids = CQ.find_pids(lambda v: CQ.is_qemu(v) and (v[1:] == argv[1:] or (key and all(
            any(k in x for x in v) for k in key) and (cmd.name is None or any(cmd.name in x for x in v)))))
        pids = [p for p in pids if p != os.getpid()]
        if len(pids) > 1:
            raise CaptureError(f"--cmdline {a.cmdline}: {len(pids)} running QEMU processes match ({pids}); use --pid")
        t = Target("single", pids[0] if pids else None, cmd)
        if not pids:
            t.notes.append("no running QEMU process matches the command line: no thread ids, no QMP")
        targets.append(t)
    else:
        try:
            text = Path(a.domain_xml).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CaptureError(f"--domain-xml {a.domain_xml}: {e.strerror}") from None
        name, disks = CQ.parse_domain_xml(text, a.domain_xml)
        pid = None
        pf = f"/run/libvirt/qemu/{name}.pid"
        if name and os.path.isfile(pf):
            try:
                pid = int(Path(pf).read_text().strip())
            except ValueError:
                pid = None
        if pid is None and name:
            found = CQ.find_pids(lambda v: CQ.is_qemu(v) and any(f"guest={name}" in x for x in v))
            pid = found[0] if len(found) == 1 else None
        t = Target("single", pid, CQ.parse_cmdline(CQ.proc_cmdline(pid)) if pid else None, disks=disks,
                   guest=name or "vm")
        t.notes.append("libvirt owns the QMP monitor: turn the events on with virsh (printed below)")
        if name:
            t.log = CQ.LogDest(f"/var/log/libvirt/qemu/{name}.log",
                               f"libvirt's domain log /var/log/libvirt/qemu/{name}.log (QEMU's stderr via virtlogd)",
                               os.path.isfile(f"/var/log/libvirt/qemu/{name}.log"))
        targets.append(t)
    for t in targets:
        if t.cmd and t.cmd.name and t.guest == "vm":
            t.guest = t.cmd.name
        if t.qmp is None and t.cmd and t.cmd.qmp_sockets and not a.domain_xml:
            for sock in t.cmd.qmp_sockets:
                try:
                    t.qmp = _connect(sock, transcript)
                    t.qmp_path = sock
                    break
                except CaptureError as e:
                    t.notes.append(f"QMP {sock}: {e}")
        if t.qmp is not None:
            t.version = t.qmp.version
            try:
                t.disks = CQ.disks_from_query_block(t.qmp.ok("query-block"))
                t.status = (t.qmp.ok("query-status") or {}).get("status")
            except CaptureError as e:
                t.notes.append(str(e))
        if not t.disks and t.cmd:
            t.disks = t.cmd.disks
        elif t.cmd:
            # query-block's cache.writeback is the guest-visible write cache NOW (off until the guest driver
            # negotiated it, or if the guest switched it): the declared mode is the command line's
            declared = {os.path.realpath(d.file): d for d in t.cmd.disks if d.file}
            for d in t.disks:
                c = declared.get(os.path.realpath(d.file)) if d.file else None
                if c is not None:
                    d.detail["query_block_cache"] = d.cache
                    d.cache = c.cache or d.cache
                    d.aio = c.aio or d.aio
        if t.log is None and t.pid:
            t.log = CQ.log_destination(t.pid, t.cmd or CQ.QemuCmdline([]))
        if t.log and t.log.simple and t.pid:
            t.trace_events = CQ.trace_events_file(t.pid)
    # migration on one host: both processes run the same guest
    if len(targets) > 1:
        for t in targets[1:]:
            t.guest = targets[0].guest
    return targets


def select_disks(targets: list[Target], wanted: list[str]) -> list[tuple[Target, CQ.VmDisk]]:
    out = []
    for t in targets:
        for d in t.disks:
            if not d.file:
                continue
            names = {d.name, os.path.basename(d.file), d.file, str(d.detail.get("device")),
                     str(d.detail.get("node_name")), str(d.detail.get("qdev"))}
            if wanted:
                if names & set(wanted):
                    out.append((t, d))
            elif not d.readonly:
                out.append((t, d))
    if not out:
        have = sorted({d.name for t in targets for d in t.disks})
        raise CaptureError(f"no disk to trace (disks: {', '.join(have) or 'none found'}"
                           f"{'; --disk ' + ' '.join(wanted) if wanted else ''})")
    return out


# -------------------------------------------------------------------------------------------------- record
def host_main(a) -> int:
    if os.geteuid() != 0:
        raise CaptureError("capture host needs root (tracefs, /proc/PID of QEMU, the QMP socket)")
    out = Path(a.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CaptureError(f"{out}: exists and is not an empty folder")
    events = CQ.read_events_file(a.events) if a.events else list(CQ.DEFAULT_EVENTS)
    out.mkdir(parents=True, exist_ok=True)
    transcript = open(out / "qmp.log", "w")  # noqa: SIM115 (closed at the end)
    info: dict = {"tool": "writeorder capture host", "argv": sys.argv, "host_kernel": os.uname().release,
                  "hostname": os.uname().nodename, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    pairs = [CH.best_clock_pair("capture_start")]
    targets = find_targets(a, transcript)
    chosen = select_disks(targets, a.disk)
    if a.device and len({id(d) for _, d in chosen}) > 1:
        raise CaptureError("--device applies to one disk: name it with --disk")

    # what lies beneath each disk
    disks = []
    for t, d in chosen:
        r = CH.resolve_device(d.file, a.device)
        disks.append((t, d, r))
        log(f"disk {d.name} ({d.format or '?'}, cache={d.cache or '?'}): {d.file} -> trace {r.device.path} "
            f"({r.device.dev})" + (f" [{'; '.join(r.device.via)}]" if r.device.via else ""))
    devices: dict[str, CH.HostDevice] = {}
    for _, _, r in disks:
        devices.setdefault(r.device.name, r.device)
    dev_info = {n: CH.device_info(dv) for n, dv in devices.items()}
    for _n, di in dev_info.items():
        log(f"{di['path']}: write_cache={di['write_cache']} fua={di['fua']}"
            + (f" (loop over {di['loop']['backing_file']})" if "loop" in di else ""))

    sampler = CH.ThreadSampler(a.thread_interval)
    for t in targets:
        if t.pid:
            sampler.add(t.pid, t.role)
    sampler.start()

    stop = threading.Event()
    reason = {"why": None}

    def on_signal(signum, _frame):
        reason["why"] = reason["why"] or signal.Signals(signum).name
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    rec = None
    cpu0 = CH.process_cpu_seconds()
    t_start = time.monotonic()
    try:
        for t in targets:
            if t.log and t.log.readable and t.log.path:
                t.log_start = os.path.getsize(t.log.path)
        rec = CH.make_recorder(a.recorder, list(devices.values()), out, force=a.force, buffer_kb=a.buffer_kb, log=log)
        pairs.append(CH.best_clock_pair("host_trace_started"))
        log(f"recording {', '.join(dv.path for dv in devices.values())} with {rec.kind} into {out}")
        for t in targets:
            _events_on(t, events, a, info)
        pairs.append(CH.best_clock_pair("qemu_events_enabled"))
        what = f"{a.duration:g} s" if a.duration else "Ctrl-C"
        log(f"capturing until {what}" + (" or QEMU exits" if any(t.pid for t in targets) else ""))
        t_start = time.monotonic()
        cpu0 = CH.process_cpu_seconds()
        next_pair = t_start + a.clock_every
        exited_at = None
        while not stop.wait(0.1):
            now = time.monotonic()
            if a.duration and now - t_start >= a.duration:
                reason["why"] = "duration"
                break
            if now >= next_pair:
                pairs.append(CH.best_clock_pair(f"t+{now - t_start:.0f}s"))
                next_pair = now + a.clock_every
            pids = [t.pid for t in targets if t.pid]
            if pids and not sampler.alive():
                if exited_at is None:
                    exited_at = now
                    pairs.append(CH.best_clock_pair("all_qemu_exited"))
                    log(f"QEMU exited; tracing {a.linger:g} s more")
                elif now - exited_at >= a.linger:
                    reason["why"] = "qemu-exited"
                    break
            if rec.errors():
                raise CaptureError("; ".join(rec.errors()))
        reason["why"] = reason["why"] or "signal"
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        wall = time.monotonic() - t_start
        cpu = CH.process_cpu_seconds() - cpu0
        for t in targets:
            _events_off(t, a)
        stats = rec.stop() if rec is not None else {}
        pairs.append(CH.best_clock_pair("host_trace_stopped"))
        sampler.stop_ev.set()
        sampler.join(timeout=5)
    log(f"stopped ({reason['why']}) after {wall:.1f} s")

    # after the recording: thread map, ftrace's pid -> comm, QEMU logs, image mappings
    nthreads = sampler.write(out / "host-threads.tsv")
    if rec.kind == "ftrace-blk":
        cmdl = CH._read(rec.tr / "saved_cmdlines")
        if cmdl:
            (out / "host-saved_cmdlines.txt").write_text(cmdl + "\n")
    qemu_logs = _copy_logs(targets, out)
    disk_entries = []
    for t, d, r in disks:
        disk_entries.append(_disk_entry(t, d, r, out, dev_info))
    trace_bytes = rec.bytes_written()
    info.update({
        "recorder": rec.kind, "recorder_stats": stats, "lost_events": rec.lost_events(),
        "stop_reason": reason["why"], "duration_s": round(wall, 3),
        "host_files": rec.files_glob(), "host_devices": dev_info,
        "qemu": [{"role": t.role, "pid": t.pid, "guest": t.guest, "qmp": t.qmp_path, "version": t.version,
                  "status_at_start": t.status, "msg_timestamp": bool(t.cmd and t.cmd.msg_timestamp),
                  "log_destination": t.log.description if t.log else None, "log_file": qemu_logs.get(t.role),
                  "events_enabled": t.events_on, "notes": t.notes,
                  "cmdline": t.cmd.argv if t.cmd else None} for t in targets],
        "threads_file": "host-threads.tsv", "threads": nthreads, "thread_samples": sampler.samples,
        "disks": disk_entries,
        "clock_pairs": pairs,
        "cost": {"recorder_cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
                 "recorder_cpu_percent": round(100 * cpu / wall, 2) if wall > 0 else None,
                 "host_trace_bytes": trace_bytes,
                 "qemu_log_bytes": sum((out / f).stat().st_size for f in qemu_logs.values()),
                 "bytes_per_minute": round((trace_bytes + sum((out / f).stat().st_size for f in qemu_logs.values()))
                                           * 60 / wall) if wall > 0 else None},
        "guest_node": targets[0].guest,
        "name": a.name or out.resolve().name,
    })
    (out / "capture.json").write_text(json.dumps(info, indent=1, default=str))
    write_traceset(out, info)
    transcript.close()
    c = info["cost"]
    log(f"host trace {trace_bytes} bytes ({rec.kind}), QEMU log {c['qemu_log_bytes']} bytes, {nthreads} QEMU threads, "
        f"recorder CPU {c['recorder_cpu_percent']}% of one CPU")
    if info["lost_events"]:
        log(f"WARNING: {info['lost_events']} host trace events were lost (ring buffer overrun): raise --buffer-kb")
    log(f"done: {out}/traceset.toml; next: writeorder check {out}")
    return 0


def _events_on(t: Target, events: list[str], a, info: dict) -> None:
    if a.no_events:
        return
    if t.qmp is None:
        cmds = " ; ".join(f"virsh qemu-monitor-command {t.guest} '{{\"execute\":\"trace-event-set-state\","
                          f"\"arguments\":{{\"name\":\"{e}\",\"enable\":true}}}}'" for e in events[:3])
        log(f"[{t.role}] no QMP connection: turn the QEMU trace events on yourself, e.g. {cmds} ... "
            f"(all {len(events)} patterns: {' '.join(events)})")
        t.notes.append("QEMU trace events were not enabled by writeorder (no QMP)")
        return
    on, was_off, warnings = CQ.enable_events(t.qmp, events)
    t.events_on = on
    t.events_restore = was_off
    for w in warnings:
        t.notes.append(f"trace-event-set-state {w}")
    log(f"[{t.role}] QEMU {t.version} pid {t.pid}: {len(on)} trace events on")
    if t.log:
        log(f"[{t.role}] QEMU writes the trace lines to {t.log.description}"
            + ("; writeorder copies the lines of this capture" if t.log.readable and not t.log.simple else "")
            + ("; writeorder copies it whole at the end (records carry host CLOCK_MONOTONIC times)"
               if t.log.simple else ""))
    simple = bool(t.log and t.log.simple)  # the simple backend stamps every record itself
    if not simple and not (t.cmd and t.cmd.msg_timestamp):
        log(f"[{t.role}] WARNING: QEMU was not started with -msg timestamp=on: its trace lines carry no time and no "
            "thread id (QEMU 7.x-10.0), so they can be aligned with the host trace only by content")
    elif not simple:
        log(f"[{t.role}] -msg timestamp=on: trace lines carry host wall-clock times")
    if "trace:" not in " ".join(t.cmd.argv if t.cmd else []) and t.version and t.version < "4":
        t.notes.append("QEMU older than 4.0: the log backend prints pids, not thread ids")


def _events_off(t: Target, a) -> None:
    if t.qmp is None:
        return
    if t.pid and not os.path.exists(f"/proc/{t.pid}"):  # QEMU has exited: nothing to turn off or flush
        t.qmp.close()
        return
    try:
        if t.events_restore and not a.leave_events_on:
            CQ.disable_events(t.qmp, t.events_restore)
        if t.log and t.log.simple:  # the simple backend writes its buffer when half full: have it written now
            t.qmp.cmd("human-monitor-command", {"command-line": "trace-file flush"})
    except (CaptureError, OSError, ValueError) as e:
        t.notes.append(f"could not turn the events off again or flush the trace buffer: {e}")
    finally:
        t.qmp.close()


def _copy_logs(targets: list[Target], out: Path) -> dict[str, str]:
    """The lines each QEMU wrote to its log file during the capture -> ``qemu-<role>.log``; a simple-backend
    trace is copied whole (its header and event names come first) -> ``qemu-<role>.trace``, with the
    ``trace-events-all`` of that QEMU beside it when one is found."""
    done = {}
    for t in targets:
        if not (t.log and t.log.readable and t.log.path):
            if t.log:
                log(f"[{t.role}] the QEMU trace lines went to {t.log.description}; copy that part of it next to "
                    "traceset.toml as qemu-{role}.log and add a [[trace]] with layer = \"qemu\"")
            continue
        stem = f"qemu-{t.role if len(targets) > 1 else (t.guest if t.guest.replace('-', '').isalnum() else 'vm')}"
        name = stem + (".trace" if t.log.simple else ".log")
        with open(t.log.path, "rb") as src, open(out / name, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            start = t.log_start if t.log_start <= size and not t.log.simple else 0  # cut or rotated: take it all
            src.seek(start)
            shutil.copyfileobj(src, dst)
        if t.log.simple:
            te = t.trace_events
            if te and not (out / "trace-events-all").exists():
                shutil.copyfile(te, out / "trace-events-all")
                log(f"[{t.role}] its event declarations: {te} -> trace-events-all")
            elif not te:
                log(f"[{t.role}] no trace-events-all found for this QEMU: copy the one of its build next to "
                    f"{name} (without it the arguments are raw numbers)")
        done[t.role] = name
    return done


def _disk_entry(t: Target, d: CQ.VmDisk, r: CH.Resolved, out: Path, dev_info: dict) -> dict:
    steps: list[dict] = []
    off = r.device.offset
    fmt = (d.format or "raw").lower()
    if r.image_file:
        steps = CH.image_mapping(r.image_file, fmt, out, log=log)
        if fmt != "raw" and not any(s["kind"] == "qemu-img-map" for s in steps):
            log(f"disk {d.name}: no qemu-img map of a {fmt} image: guest offsets cannot be mapped")
            steps = []
        if not any(s["kind"] == "extents" for s in steps):
            steps = []
        if off:
            steps.append({"kind": "raw", "offset": off})
    elif fmt != "raw":
        # e.g. qcow2 on an LV: guest offset -> offset in the device (no filesystem in between)
        steps = CH.qemu_img_map(d.file, fmt, out, log=log)
        if steps and off:
            steps.append({"kind": "raw", "offset": off})
    else:
        steps = [{"kind": "raw", "offset": off}]
    return {"name": d.name, "role": t.role, "guest": t.guest, "file": d.file, "format": fmt, "cache": d.cache,
            "aio": d.aio, "host_device": r.device.dev, "host_device_name": r.device.name, "via": r.device.via,
            "image_file": r.image_file, "fstype": r.fstype, "mapping": steps or None,
            "write_cache": dev_info[r.device.name]["write_cache"], "fua": dev_info[r.device.name]["fua"]}


# ------------------------------------------------------------------------------------------------ manifest
def _q(s) -> str:
    return json.dumps(str(s), ensure_ascii=False)


def _mapping_toml(steps: list[dict]) -> str:
    def one(s):
        return "{ " + ", ".join(f"{k} = {v if isinstance(v, int) else _q(v)}" for k, v in s.items()) + " }"
    return one(steps[0]) if len(steps) == 1 else "[" + ", ".join(one(s) for s in steps) + "]"


def write_traceset(out: Path, info: dict) -> Path:
    """``traceset.toml`` (DESIGN.md) from ``capture.json``'s content."""
    L = ["# written by `writeorder capture host` (see capture.json for everything it recorded)",
         f"name = {_q(info.get('name') or out.name)}",
         f"description = {_q('capture of ' + ', '.join(d['name'] for d in info['disks']) + ' on ' + info['hostname'])}",
         "", "[[node]]", 'name = "host"', 'kind = "host"']
    guests = sorted({q["guest"] for q in info["qemu"]} | {d["guest"] for d in info["disks"]})
    for g in guests:
        L += ["", "[[node]]", f"name = {_q(g)}", 'kind = "guest"']
    L += ["", f"# host block layer: {info['recorder']}, time = host CLOCK_MONOTONIC ns; devices: "
          + ", ".join(f"{v['path']} ({v['dev']}, write_cache={v['write_cache']}, fua={v['fua']})"
                      for v in info["host_devices"].values()),
          "[[trace]]", 'node = "host"', 'layer = "host-block"', f"path = {_q(info['host_files'])}",
          'format = "blktrace"']
    for q in info["qemu"]:
        if q.get("log_file"):
            simple = q["log_file"].endswith(".trace")  # _copy_logs' name for a simple-backend trace
            L += ["", f"# QEMU {q.get('version') or ''} pid {q['pid']}; "
                  + ("simple trace backend (binary, host CLOCK_MONOTONIC ns)" if simple
                     else "-msg timestamp=" + ("on" if q["msg_timestamp"] else "off (lines have no time and no thread id)"))
                  + f"; log: {q['log_destination']}",
                  "[[trace]]", 'node = "host"', 'layer = "qemu"', f"role = {_q(q['role'])}", f"guest = {_q(q['guest'])}"]
            if q.get("pid"):
                L.append(f"pid = {int(q['pid'])}")
            # the glob also matches the log once compressed (xz/zstd/gzip: read transparently)
            L += [f"threads = {_q(info['threads_file'])}", f"path = {_q(q['log_file'] + '*')}"]
            if simple:
                L.append('format = "qemu-simple"')
        else:
            L += ["", f"# QEMU pid {q['pid']} ({q['role']}): its trace lines went to {q.get('log_destination')};",
                  "# copy them here and add: [[trace]] node = \"host\" layer = \"qemu\" "
                  f"role = \"{q['role']}\" guest = \"{q['guest']}\" pid = {q['pid']} path = \"qemu-....log\""]
    g = info.get("guest")
    if g:
        dev = g.get("device", {})
        L += ["", f"# guest block layer: blktrace in the guest, time = guest CLOCK_MONOTONIC ns; {dev.get('device', '')} "
              f"write_cache={dev.get('write_cache', '?')} fua={dev.get('fua', '?')}",
              "[[trace]]", f"node = {_q(g['node'])}", 'layer = "guest-block"', f"path = {_q(g['path'])}",
              'format = "blktrace"']
    for d in info["disks"]:
        L += ["", "[[disk]]",
              f"# {d['name']}: {d['file']} ({d['format']}) -> host {d['host_device_name']}; host write_cache="
              f"{d['write_cache']} fua={d['fua']}",
              f"name = {_q(d['name'])}", f"guest = {_q(d['guest'])}"]
        gd = (g or {}).get("device", {}).get("dev") if g and g.get("node") == d["guest"] else None
        if gd and ":" in gd:
            L.append(f"guest_device = {_q(gd.replace(':', ','))}")
        else:
            L.append("# guest_device = \"MAJ,MIN\"   (in the guest: cat /sys/block/vda/dev)")
        L.append(f"host_device = {_q(d['host_device'])}")
        if d.get("mapping"):
            L.append(f"mapping = {_mapping_toml(d['mapping'])}")
        else:
            L.append("# mapping unknown: record `qemu-img map --output=json` and `filefrag -v` of the image")
        if d.get("cache") in ("none", "writeback", "writethrough", "directsync", "unsafe"):
            L.append(f"cache = {_q(d['cache'])}")
    for p in info["clock_pairs"]:
        L += ["", f"[[clock]]  # {p['label']} (uncertainty {p['uncertainty_ns']} ns)", 'a = "host:monotonic"',
              'b = "host:realtime"', f"a_ns = {p['mono_ns']}", f"b_ns = {p['realtime_ns']}"]
    if g and g.get("clock_pairs"):
        L += ["", "# guest clock markers (guest monotonic / guest realtime), kept as comments: a guest's realtime is only",
              "# as good as its NTP; writeorder aligns the guest by causal pairs of matched requests instead"]
        for p in g["clock_pairs"]:
            L.append(f"#   {p['label']}: {g['node']}:monotonic {p['mono_ns']} = {g['node']}:realtime {p['realtime_ns']}"
                     f" (+-{p['uncertainty_ns']} ns)")
    path = out / "traceset.toml"
    path.write_text("\n".join(L) + "\n")
    return path
