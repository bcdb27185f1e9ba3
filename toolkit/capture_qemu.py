"""QEMU-side pieces of ``writeorder capture host``: find the VM's disks, talk QMP, find where the trace log goes.

* :class:`QMP` - a minimal QMP client over a unix socket (greeting, ``qmp_capabilities``, commands, events
  skipped), with a transcript stamped with host CLOCK_MONOTONIC / CLOCK_REALTIME.
* :func:`qmp_pid` - the QEMU process behind a QMP connection (``SO_PEERCRED``).
* :func:`parse_cmdline` - disks (``-drive``, ``-blockdev``), ``-name``, ``-D``, ``-trace file=``,
  ``-msg timestamp=on``, ``-qmp`` sockets from a QEMU command line.
* :func:`parse_domain_xml` - the same from a libvirt domain XML.
* :func:`disks_from_query_block` - the same from QMP ``query-block``.
* :func:`log_destination` - where the log backend writes: the ``-D`` file (or 7.2's ``-trace file=``), else
  stderr (``/proc/PID/fd/2``). QMP cannot change it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import struct
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from toolkit.capture_host import CaptureError
from toolkit.parsers import trace_events as te

#: QEMU trace events toolkit/qemu.py and the checks read (patterns for trace-event-set-state)
DEFAULT_EVENTS = (
    "virtio_blk_*", "blk_co_preadv", "blk_co_pwritev", "blk_co_p*", "bdrv_co_preadv_part", "bdrv_co_pwritev_part",
    "bdrv_co_p*", "bdrv_co_pwrite_zeroes", "thread_pool_*", "luring_*", "laio_*",
    "runstate_set", "vm_state_notify", "migrate_set_state", "migration_*", "vm_stop_flush_all",
    "savevm_*", "loadvm_*", "qemu_loadvm_*", "process_incoming_migration_co_end", "migration_block_activation",
    "vmstate_downtime_*", "qmp_enter_*", "qmp_exit_*",
)


def read_events_file(path: str) -> list[str]:
    """One event name or glob per line; ``#`` comments and blank lines ignored (QEMU's ``-trace events=`` syntax)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaptureError(f"--events {path}: {e.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        if not re.fullmatch(r"-?[A-Za-z0-9_*?]+", s):
            raise CaptureError(f"--events {path}: line {n}: {s[:60]!r} is not an event name or glob")
        out.append(s)
    if not out:
        raise CaptureError(f"--events {path}: no event names")
    return out


# ------------------------------------------------------------------------------------------------------- QMP
class QMP:
    """Synchronous QMP client: replies are matched by ``id``; asynchronous events are logged and skipped."""

    def __init__(self, path: str, transcript=None, timeout: float = 10.0):
        self.path, self.transcript = path, transcript
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise CaptureError(f"QMP socket {path}: {e.strerror or e}") from None
        self.f = self.sock.makefile("rwb")
        self.n = 0
        self.events: list[dict] = []
        try:
            greeting = self._recv()
        except TimeoutError:
            raise CaptureError(f"QMP socket {path}: no greeting within {timeout:.0f} s (another client is connected? "
                               "QEMU serves one QMP client per socket; libvirt keeps its monitor: use "
                               "`virsh qemu-monitor-command` instead, see --domain-xml)") from None
        if "QMP" not in greeting:
            raise CaptureError(f"QMP socket {path}: not a QMP greeting: {str(greeting)[:200]}")
        self.greeting = greeting["QMP"]
        self.cmd("qmp_capabilities")

    @property
    def version(self) -> str:
        v = self.greeting.get("version", {}).get("qemu", {})
        return f"{v.get('major', '?')}.{v.get('minor', '?')}.{v.get('micro', '?')}"

    def _log(self, direction: str, text: str) -> None:
        if self.transcript:
            m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            r = time.clock_gettime_ns(time.CLOCK_REALTIME)
            text = text.strip()
            if len(text) > 4000:
                text = text[:4000] + f" ... ({len(text)} characters)"
            self.transcript.write(f"{m} {r} {direction} {text}\n")
            self.transcript.flush()

    def _recv(self) -> dict:
        line = self.f.readline()
        if not line:
            raise CaptureError(f"QMP socket {self.path}: connection closed by QEMU")
        self._log("<", line.decode("utf-8", "replace"))
        return json.loads(line)

    def cmd(self, name: str, args: dict | None = None) -> dict:
        """Send a command; returns the reply (``{"return": ...}`` or ``{"error": ...}``)."""
        self.n += 1
        msg = {"execute": name, "id": f"wo-{self.n}"}
        if args is not None:
            msg["arguments"] = args
        data = json.dumps(msg)
        self._log(">", data)
        self.f.write(data.encode() + b"\n")
        self.f.flush()
        while True:
            obj = self._recv()
            if "event" in obj:
                self.events.append(obj)
                continue
            if obj.get("id") == msg["id"]:
                return obj

    def ok(self, name: str, args: dict | None = None):
        r = self.cmd(name, args)
        if "error" in r:
            raise CaptureError(f"QMP {name}: {r['error'].get('desc', r['error'])}")
        return r.get("return")

    def close(self) -> None:
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def _cred_pid(s: socket.socket) -> int | None:
    try:
        cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", cred)[0]
        return pid or None
    except OSError:
        return None


def qmp_pid(q: QMP) -> int | None:
    return _cred_pid(q.sock)


# ---------------------------------------------------------------------------------------------------- disks
@dataclass
class VmDisk:
    """One VM disk as QEMU was told about it."""

    name: str                 # device id / node name / libvirt target (vda) / drive id
    file: str | None          # the host path QEMU opens (image file or block device)
    format: str | None = None  # raw, qcow2, ...
    cache: str | None = None  # none | writeback | writethrough | directsync | unsafe
    aio: str | None = None
    readonly: bool = False
    detail: dict = field(default_factory=dict)


def cache_name(writeback: bool | None, direct: bool | None, no_flush: bool | None) -> str | None:
    """QEMU's cache flags -> the cache= mode name (formats.md 6.1)."""
    if writeback is None:
        return None
    if no_flush:
        return "unsafe"
    if writeback:
        return "none" if direct else "writeback"
    return "directsync" if direct else "writethrough"


def _opts(s: str) -> dict:
    """QEMU option string ``a=b,c=d`` (``,,`` escapes a comma); a bare first word becomes ``_``."""
    out, parts, cur, i = {}, [], "", 0
    while i < len(s):
        if s[i] == ",":
            if s[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += s[i]
        i += 1
    parts.append(cur)
    for n, p in enumerate(parts):
        k, eq, v = p.partition("=")
        if eq:
            out[k] = v
        elif n == 0 and p:
            out["_"] = p
    return out


def _bool(v: str | None) -> bool | None:
    if v is None:
        return None
    return v.lower() in ("on", "yes", "true", "1")


@dataclass
class QemuCmdline:
    argv: list[str]
    name: str | None = None
    log_file: str | None = None        # -D
    trace_file: str | None = None      # -trace file= (7.2: the log backend's file when simple is not built)
    msg_timestamp: bool = False
    daemonize: bool = False
    qmp_sockets: list[str] = field(default_factory=list)
    disks: list[VmDisk] = field(default_factory=list)


def split_cmdline(text: str) -> list[str]:
    """A command line from /proc/PID/cmdline (NUL-separated) or a shell-quoted text file (backslash-newlines ok)."""
    if "\0" in text:
        return [a for a in text.split("\0") if a != ""]
    text = text.replace("\\\n", " ")
    return shlex.split(text, comments=False)


def parse_cmdline(argv: list[str]) -> QemuCmdline:
    c = QemuCmdline(argv=list(argv))
    blockdevs: dict[str, dict] = {}
    drives: list[dict] = []
    devices: list[dict] = []
    chardevs: dict[str, str] = {}
    monitors: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        opt = "-" + a.lstrip("-") if a.startswith("-") else None
        val = argv[i + 1] if i + 1 < len(argv) else ""
        if opt is None:
            i += 1
            continue
        if opt in ("-daemonize",):
            c.daemonize = True
            i += 1
            continue
        i += 2
        if opt == "-name":
            o = _opts(val)
            c.name = o.get("guest") or o.get("_")
        elif opt == "-D":
            c.log_file = val
        elif opt == "-trace":
            o = _opts(val)
            if "file" in o:
                c.trace_file = o["file"]
        elif opt == "-msg":
            c.msg_timestamp = bool(_bool(_opts(val).get("timestamp")))
        elif opt in ("-qmp", "-qmp-pretty"):
            m = re.match(r"unix:([^,]+)", val)
            if m:
                c.qmp_sockets.append(m.group(1))
        elif opt == "-chardev":
            o = _opts(val)
            if o.get("_") == "socket" and "path" in o and "id" in o:
                chardevs[o["id"]] = o["path"]
        elif opt == "-mon":
            o = _opts(val)
            if o.get("mode") == "control" and "chardev" in o:
                monitors.append(o["chardev"])
        elif opt == "-drive":
            drives.append(_opts(val))
        elif opt == "-blockdev":
            if val.startswith("{"):
                try:
                    bd = json.loads(val)
                except ValueError:
                    bd = {}
            else:
                bd = _opts(val)
            if "node-name" in bd:
                blockdevs[bd["node-name"]] = bd
        elif opt == "-device":
            devices.append(_opts(val))
        elif opt in ("-hda", "-hdb", "-hdc", "-hdd"):
            drives.append({"file": val, "id": opt[1:]})
    c.qmp_sockets += [chardevs[m] for m in monitors if m in chardevs]
    for n, d in enumerate(drives):
        if "file" not in d:
            continue
        wb = _bool(d.get("cache.writeback"))
        direct = _bool(d.get("cache.direct"))
        nf = _bool(d.get("cache.no-flush"))
        cache = d.get("cache") or cache_name(True if wb is None else wb, direct, nf)
        c.disks.append(VmDisk(name=d.get("id") or f"drive{n}", file=d["file"], format=d.get("format"),
                              cache=cache, aio=d.get("aio"), readonly=bool(_bool(d.get("readonly"))),
                              detail={"if": d.get("if")}))
    # -blockdev: a format node over a protocol node (file / host_device); the front-end -device names the top
    for dev in devices:
        top = dev.get("drive")
        if not top or top not in blockdevs:
            continue
        node, fmt = blockdevs[top], None
        chain = []
        cache = node.get("cache") if isinstance(node.get("cache"), dict) else {}
        while isinstance(node, dict):
            chain.append(node.get("driver"))
            if node.get("driver") in ("file", "host_device", "host_cdrom"):
                break
            fmt = fmt or node.get("driver")
            child = node.get("file")
            node = blockdevs.get(child) if isinstance(child, str) else child
        if not isinstance(node, dict) or "filename" not in node:
            continue
        cache = cache or (node.get("cache") if isinstance(node.get("cache"), dict) else {})
        wb = _bool(dev.get("write-cache"))
        direct = cache.get("direct") if isinstance(cache.get("direct"), bool) else _bool(node.get("cache.direct"))
        nf = cache.get("no-flush") if isinstance(cache.get("no-flush"), bool) else _bool(node.get("cache.no-flush"))
        c.disks.append(VmDisk(name=dev.get("id") or top, file=node["filename"], format=fmt or "raw",
                              cache=cache_name(True if wb is None else wb, direct, nf), aio=node.get("aio"),
                              detail={"blockdev_chain": chain, "device": dev.get("_")}))
    return c


def parse_domain_xml(text: str, where: str = "domain XML") -> tuple[str | None, list[VmDisk]]:
    """libvirt ``<domain>``: its name and ``<disk>`` elements (file or block sources)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise CaptureError(f"{where}: not XML: {e}") from None
    if root.tag != "domain":
        raise CaptureError(f"{where}: root element is <{root.tag}>, not <domain>")
    name = root.findtext("name")
    disks = []
    for d in root.iter("disk"):
        if d.get("device", "disk") != "disk":
            continue
        src = d.find("source")
        drv = d.find("driver")
        tgt = d.find("target")
        path = None if src is None else (src.get("file") or src.get("dev") or src.get("volume"))
        disks.append(VmDisk(name=(tgt.get("dev") if tgt is not None else None) or f"disk{len(disks)}", file=path,
                            format=None if drv is None else drv.get("type"),
                            cache=None if drv is None else (drv.get("cache") or "default"),
                            aio=None if drv is None else drv.get("io"),
                            readonly=d.find("readonly") is not None,
                            detail={"type": d.get("type"), "bus": None if tgt is None else tgt.get("bus")}))
    for dsk in disks:
        if dsk.cache == "default":
            dsk.cache = None  # libvirt's default is QEMU's: writeback; say "unknown" rather than guess
    return name, disks


def disks_from_query_block(blocks: list[dict]) -> list[VmDisk]:
    """QMP ``query-block`` -> disks (the image at the bottom of each backing chain's active layer)."""
    out = []
    for b in blocks:
        ins = b.get("inserted")
        if not ins:
            continue
        img = ins.get("image", {})
        fname = ins.get("file") or img.get("filename")
        # json:{...} filenames (blockdev): take the protocol node's filename
        if isinstance(fname, str) and fname.startswith("json:"):
            try:
                j = json.loads(fname[5:])
                node = j
                while isinstance(node, dict) and "filename" not in node:
                    node = node.get("file")
                fname = node.get("filename") if isinstance(node, dict) else fname
            except ValueError:
                pass
        c = ins.get("cache", {})
        qdev = (b.get("qdev") or "").rstrip("/")
        qdev_id = qdev.split("/")[-2] if qdev.endswith("/virtio-backend") else qdev.split("/")[-1]
        out.append(VmDisk(name=b.get("device") or qdev_id or ins.get("node-name") or "disk",
                          file=fname, format=ins.get("drv") or img.get("format"),
                          cache=cache_name(c.get("writeback"), c.get("direct"), c.get("no-flush")),
                          readonly=bool(ins.get("ro")),
                          detail={"device": b.get("device"), "node_name": ins.get("node-name"), "qdev": qdev_id,
                                  "runtime_cache": {k: c.get(k) for k in ("writeback", "direct", "no-flush")},
                                  "backing_file": ins.get("backing_file"), "virtual_size": img.get("virtual-size")}))
    return out


# -------------------------------------------------------------------------------------------------- the log
def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError as e:
        raise CaptureError(f"process {pid}: {e.strerror}") from None
    return [a for a in raw.split("\0") if a != ""]


def find_pids(match) -> list[int]:
    """Pids of processes whose argv (a list) satisfies ``match``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = proc_cmdline(int(d))
        except CaptureError:
            continue
        if argv and match(argv):
            out.append(int(d))
    return out


def is_qemu(argv: list[str]) -> bool:
    return bool(argv) and "qemu" in os.path.basename(argv[0])


@dataclass
class LogDest:
    path: str | None       # a file we can read (the -D file, or stderr when it is a regular file)
    description: str       # what to tell the user
    readable: bool
    simple: bool = False   # QEMU's simple backend: a binary file, copied whole (header and event names first)


def is_simple_trace(path: str) -> bool:
    """Whether ``path`` is a file QEMU's simple trace backend writes (by its header, either byte order)."""
    from toolkit.parsers import detect_format

    return os.path.isfile(path) and detect_format(path) == "qemu-simple"


def trace_events_file(pid: int) -> str | None:
    """The ``trace-events-all`` of the QEMU binary running as ``pid`` (what decodes its simple-backend trace):
    beside its install (``../share/qemu``), in its build tree, or at the usual install paths."""
    exe = None
    with contextlib.suppress(OSError):
        exe = os.path.realpath(f"/proc/{pid}/exe")
    cands = []
    if exe:
        d = os.path.dirname(exe)
        cands += [os.path.join(d, "..", "share", "qemu", "trace-events-all"), os.path.join(d, "trace", "trace-events-all")]
    cands += list(te.DEFAULT_PATHS)
    return next((os.path.normpath(c) for c in cands if os.path.isfile(c)), None)


def log_destination(pid: int, cmd: QemuCmdline) -> LogDest:
    """Where QEMU writes its trace: the simple backend's binary file (``-trace file=``, else ``trace-PID`` in its
    working directory), or the log backend's lines (``-D``, 7.2's ``-trace file=``, stderr). QMP cannot change it."""
    cwd = None
    with contextlib.suppress(OSError):
        cwd = os.readlink(f"/proc/{pid}/cwd")

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) or not cwd else os.path.join(cwd, p)

    for p in ([absolute(cmd.trace_file)] if cmd.trace_file else []) + ([os.path.join(cwd, f"trace-{pid}")] if cwd else []):
        if is_simple_trace(p):
            return LogDest(p, f"the simple-backend trace file {p} (binary)", True, simple=True)

    if cmd.log_file:
        p = absolute(cmd.log_file)
        if "%d" in p:
            return LogDest(None, f"the -D file pattern {p} (one file per thread with -d tid: collect them yourself)",
                           False)
        return LogDest(p, f"the -D log file {p}", os.path.isfile(p))
    if cmd.trace_file:
        p = absolute(cmd.trace_file)
        return LogDest(p, f"the -trace file= log file {p} (QEMU 7.2 log backend)", os.path.isfile(p))
    try:
        tgt = os.readlink(f"/proc/{pid}/fd/2")
    except OSError:
        tgt = None
    if tgt is None:
        return LogDest(None, "QEMU's stderr (could not read /proc/PID/fd/2)", False)
    if tgt.startswith("/") and os.path.isfile(tgt):
        return LogDest(tgt, f"QEMU's stderr, which is the file {tgt}", True)
    if tgt == "/dev/null":
        return LogDest(None, "QEMU's stderr, which is /dev/null: the trace lines are LOST (start QEMU with -D FILE)",
                       False)
    kind = "a pipe" if tgt.startswith("pipe:") else "a socket" if tgt.startswith("socket:") else tgt
    hint = " (libvirt: virtlogd writes it to /var/log/libvirt/qemu/<domain>.log)" if kind != tgt else ""
    return LogDest(None, f"QEMU's stderr, which is {kind}{hint}: collect the lines from its reader", False)


def _qmp_first(patterns: list[str]) -> list[str]:
    return sorted(patterns, key=lambda p: not p.startswith("qmp_"))


def enable_events(q: QMP, patterns: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Turn on each pattern. Returns (events now on, what to turn off at the end, warnings).

    The states are read before anything is turned on, and the ``qmp_*`` patterns are turned on last, so that
    QEMU does not log writeorder's own QMP commands (the replies of trace-event-get-state are long). The undo
    list holds the patterns whose events were all off before, then single events that were off.
    """
    by_pat: dict[str, list[tuple[str, str]]] = {}
    warnings = []
    for pat in patterns:
        r = q.cmd("trace-event-get-state", {"name": pat})
        if "error" in r:
            warnings.append(f"{pat}: {r['error'].get('desc')}")
            continue
        by_pat[pat] = [(e["name"], e.get("state")) for e in r.get("return", []) if e.get("state") != "unavailable"]
        if not by_pat[pat]:
            warnings.append(f"{pat}: no such event in this QEMU")
    on: set[str] = set()
    undo: list[str] = []
    singles: set[str] = set()
    for pat in reversed(_qmp_first(list(by_pat))):
        evs = by_pat[pat]
        if not evs:
            continue
        r = q.cmd("trace-event-set-state", {"name": pat, "enable": True, "ignore-unavailable": True})
        if "error" in r:
            warnings.append(f"{pat}: {r['error'].get('desc')}")
            continue
        on.update(n for n, _ in evs)
        if all(st != "enabled" for _, st in evs):
            undo.append(pat)
        else:
            singles.update(n for n, st in evs if st != "enabled")
    undo = _qmp_first(undo) + sorted(singles - {n for p in undo for n, _ in by_pat[p]})
    return sorted(on), undo, warnings


def disable_events(q: QMP, names: list[str]) -> None:
    """Turn off patterns / events (``qmp_*`` first, so that the rest is not logged)."""
    for n in _qmp_first(names):
        q.cmd("trace-event-set-state", {"name": n, "enable": False, "ignore-unavailable": True})
