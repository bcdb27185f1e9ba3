"""Host-side pieces of ``writeorder capture host``: what lies beneath a VM disk, and the recorders.

* :func:`resolve_device` - a disk image path (file or block device) -> the host block device to trace, through
  ``stat``, ``/proc/self/mountinfo`` and ``/sys/class/block``; partitions are traced on their whole disk with
  the partition start as the mapping offset.
* :func:`device_info` - ``queue/write_cache``, ``queue/fua`` and friends of a traced device (formats.md section 3:
  without them "no flush seen" cannot be told from "flush not needed").
* :class:`FtraceBlkRecorder` - the ftrace ``blk`` tracer in binary mode (where debugfs blktrace is locked down),
  one reader thread per CPU writing ``host.blktrace.<cpu>``; :class:`BlktraceRecorder` - the blktrace tool.
* :func:`clock_pair` - CLOCK_MONOTONIC / CLOCK_REALTIME read as a sandwich (mono, real, mono).
* :class:`ThreadSampler` - the host thread ids of each QEMU process, sampled from ``/proc/PID/task``.

Everything here runs as root on the host being traced; nothing here knows about QEMU's protocol.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
ACT_MASK = "read,write,flush,sync,queue,requeue,issue,complete,fs,pc,notify,ahead,meta,discard,drv_data,fua"


class CaptureError(Exception):
    """A problem the user can fix (wrong argument, missing permission, busy tracer); one line, no traceback."""


def _read(path: str | Path, default: str | None = None) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _write(path: str | Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


# ------------------------------------------------------------------------------------------------- devices
@dataclass
class HostDevice:
    """A host block device to trace (always a whole disk: partitions are traced on their parent)."""

    name: str            # sysfs name: loop0, sda, dm-3, nvme0n1
    major: int
    minor: int
    offset: int = 0      # byte offset of the traced data inside this device (a partition's start)
    via: list[str] = field(default_factory=list)   # how it was found, one step per entry

    @property
    def dev(self) -> str:
        return f"{self.major},{self.minor}"

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


@dataclass
class Resolved:
    """Where a VM disk's bytes live: ``image_file`` when it is a file on a host filesystem."""

    source: str
    device: HostDevice
    image_file: str | None = None
    fstype: str | None = None
    mountpoint: str | None = None


def _sys_block(major: int, minor: int) -> Path:
    p = Path(f"/sys/dev/block/{major}:{minor}")
    if not p.exists():
        raise CaptureError(f"no /sys/dev/block/{major}:{minor}: device {major},{minor} is not a block device here")
    return p.resolve()


def whole_disk(major: int, minor: int, via: list[str]) -> HostDevice:
    """The traced device for major:minor: the device itself, or the whole disk of a partition."""
    sp = _sys_block(major, minor)
    name = sp.name
    if (sp / "partition").exists():
        start = int(_read(sp / "start", "0") or 0)
        parent = sp.parent
        pmaj, pmin = (int(x) for x in (_read(parent / "dev") or "0:0").split(":"))
        via = via + [f"/dev/{name} is partition {_read(sp / 'partition')} of /dev/{parent.name}, starting at "
                     f"sector {start}: tracing /dev/{parent.name} (blktrace sectors are whole-disk sectors)"]
        return HostDevice(parent.name, pmaj, pmin, offset=start * 512, via=via)
    return HostDevice(name, major, minor, via=via)


def _unescape_mount(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) + 0 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@dataclass
class Mount:
    major: int
    minor: int
    root: str
    mountpoint: str
    fstype: str
    source: str


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Parse ``mountinfo`` (proc(5)): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER."""
    out = []
    for line in (_read(mountinfo, "") or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 2:
            continue
        maj, _, mi = f[2].partition(":")
        out.append(Mount(int(maj), int(mi), _unescape_mount(f[3]), _unescape_mount(f[4]), r[0], _unescape_mount(r[1])))
    return out


def _mount_of(path: str, st_dev: int, table: list[Mount]) -> Mount | None:
    """The mount holding ``path``: same device number if any mount has it, else the longest mount-point prefix."""
    maj, mi = os.major(st_dev), os.minor(st_dev)
    same = [m for m in table if (m.major, m.minor) == (maj, mi)]
    pref = [m for m in table if path == m.mountpoint or path.startswith(m.mountpoint.rstrip("/") + "/")]
    cands = [m for m in same if m in pref] or same or pref
    return max(cands, key=lambda m: len(m.mountpoint)) if cands else None


def resolve_device(source: str, override: str | None = None) -> Resolved:
    """Image path -> host block device: a block device directly, or image file -> filesystem -> block device.

    ``override``: ``/dev/X`` (or ``MAJ:MIN``) given by the user, used as is (still the whole disk of a partition).
    """
    if override:
        if ":" in override and not override.startswith("/"):
            maj, mi = (int(x) for x in override.split(":"))
        else:
            try:
                st = os.stat(override)
            except OSError as e:
                raise CaptureError(f"--device {override}: {e.strerror}") from None
            if not stat.S_ISBLK(st.st_mode):
                raise CaptureError(f"--device {override}: not a block device")
            maj, mi = os.major(st.st_rdev), os.minor(st.st_rdev)
        dev = whole_disk(maj, mi, [f"--device {override} ({maj},{mi})"])
        image = source if source and os.path.isfile(source) else None
        return Resolved(source, dev, image_file=image)
    try:
        st = os.stat(source)
    except OSError as e:
        raise CaptureError(f"{source}: {e.strerror} (is it a path on this host? use --device /dev/X to name the "
                           "device beneath the disk)") from None
    real = os.path.realpath(source)
    if stat.S_ISBLK(st.st_mode):
        maj, mi = os.major(st.st_rdev), os.minor(st.st_rdev)
        dev = whole_disk(maj, mi, [f"{source} is block device {maj},{mi}"])
        return Resolved(source, dev)
    if not stat.S_ISREG(st.st_mode):
        raise CaptureError(f"{source}: neither a regular file nor a block device; use --device /dev/X")
    m = _mount_of(real, st.st_dev, mounts())
    if m is None:
        raise CaptureError(f"{source}: no mount in /proc/self/mountinfo holds it; use --device /dev/X")
    via = [f"{source} is a file on {m.fstype} mounted at {m.mountpoint} (source {m.source}, device "
           f"{m.major}:{m.minor})"]
    maj, mi = m.major, m.minor
    if maj == 0:
        # btrfs, overlay, network file systems: the st_dev is anonymous; the mount source may still be a device
        try:
            sst = os.stat(m.source)
        except OSError:
            sst = None
        if sst is None or not stat.S_ISBLK(sst.st_mode):
            raise CaptureError(f"{source}: on {m.fstype} ({m.source}), which has no single local block device; "
                               "name the device to trace with --device /dev/X")
        maj, mi = os.major(sst.st_rdev), os.minor(sst.st_rdev)
        via.append(f"mount source {m.source} is block device {maj},{mi}")
    dev = whole_disk(maj, mi, via)
    return Resolved(source, dev, image_file=real, fstype=m.fstype, mountpoint=m.mountpoint)


def device_info(dev: HostDevice) -> dict:
    """Cache and queue facts of a traced device, plus what stacks beneath it (loop backing file, dm slaves)."""
    q = Path(f"/sys/block/{dev.name}/queue")
    info = {
        "name": dev.name, "dev": dev.dev, "path": dev.path,
        "write_cache": _read(q / "write_cache"), "fua": _read(q / "fua"),
        "logical_block_size": _read(q / "logical_block_size"), "rotational": _read(q / "rotational"),
        "scheduler": _read(q / "scheduler"), "size_sectors": _read(f"/sys/block/{dev.name}/size"),
    }
    lp = Path(f"/sys/block/{dev.name}/loop")
    if lp.exists():
        info["loop"] = {"backing_file": _read(lp / "backing_file"), "direct_io": _read(lp / "dio"),
                        "offset": _read(lp / "offset")}
    slaves = Path(f"/sys/block/{dev.name}/slaves")
    if slaves.exists() and any(slaves.iterdir()):
        info["slaves"] = sorted(p.name for p in slaves.iterdir())
    return info


# ---------------------------------------------------------------------------------------------------- clocks
def clock_pair(label: str) -> dict:
    """CLOCK_MONOTONIC and CLOCK_REALTIME read as a sandwich: mono, real, mono; ``mono_ns`` is the midpoint."""
    m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    r = time.clock_gettime_ns(time.CLOCK_REALTIME)
    m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return {"label": label, "mono_ns": (m1 + m2) // 2, "realtime_ns": r, "uncertainty_ns": m2 - m1}


def best_clock_pair(label: str, tries: int = 5) -> dict:
    """The tightest of a few sandwiches (a preemption between the reads widens one)."""
    return min((clock_pair(label) for _ in range(tries)), key=lambda p: p["uncertainty_ns"])


# ---------------------------------------------------------------------------------------------- recorders
def tracefs() -> Path:
    for p in TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(p, "trace_pipe")):
            return Path(p)
    raise CaptureError("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")


def lockdown() -> str | None:
    """The kernel lockdown mode ('none', 'integrity', 'confidentiality') when securityfs shows it."""
    s = _read("/sys/kernel/security/lockdown")
    if not s:
        return None
    for w in s.split():
        if w.startswith("["):
            return w.strip("[]")
    return None


def online_cpus(tr: Path) -> list[int]:
    return sorted(int(d[3:]) for d in os.listdir(tr / "per_cpu") if d.startswith("cpu") and d[3:].isdigit())


class _PipeReader(threading.Thread):
    """Copies one CPU's ``trace_pipe`` (binary blk_io_trace records in ``bin`` mode) to a file."""

    def __init__(self, src: Path, dst: Path, stop: threading.Event, period: float = 0.1):
        super().__init__(daemon=True, name=f"reader-{src.parent.name}")
        self.src, self.dst, self.stop, self.period = src, dst, stop, period
        self.bytes = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.src, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            self.error = f"{self.src}: {e.strerror}"
            return
        try:
            with open(self.dst, "wb") as out:
                idle_after_stop = 0
                while True:
                    # non-blocking reads, not poll(): trace_pipe's poll may wait for buffer_percent of the buffer
                    try:
                        data = os.read(fd, 1 << 16)
                    except OSError as e:
                        if e.errno != errno.EAGAIN:
                            raise
                        data = b""
                    if data:
                        out.write(data)
                        self.bytes += len(data)
                        idle_after_stop = 0
                        continue
                    if self.stop.is_set():
                        idle_after_stop += 1
                        if idle_after_stop >= 2:  # drained: two empty reads after the stop
                            break
                    time.sleep(self.period)
        except OSError as e:
            self.error = f"{self.src}: {e.strerror}"
        finally:
            os.close(fd)


class FtraceBlkRecorder:
    """The ftrace ``blk`` tracer in binary mode: standard v7 ``blk_io_trace`` records, time = CLOCK_MONOTONIC.

    The ring buffer and the current tracer are global: refuses to start when another tracer is active, and
    restores the previous clock, options and buffer size when it stops (also after an error).
    """

    kind = "ftrace-blk"

    def __init__(self, devices: list[HostDevice], outdir: Path, prefix: str = "host", buffer_kb: int = 16384,
                 force: bool = False):
        self.devices, self.outdir, self.prefix = devices, Path(outdir), prefix
        self.buffer_kb, self.force = buffer_kb, force
        self.tr = tracefs()
        self.stop_ev = threading.Event()
        self.readers: list[_PipeReader] = []
        self.saved: dict[str, str] = {}
        self.enabled: list[str] = []
        self.started = False
        self.stats: dict = {}

    def files_glob(self) -> str:
        return f"{self.prefix}.blktrace.*"

    def _opt_state(self, name: str) -> str | None:
        for line in (_read(self.tr / "trace_options", "") or "").splitlines():
            if line.strip() in (name, "no" + name):
                return line.strip()
        return None

    def start(self) -> None:
        tr = self.tr
        cur = _read(tr / "current_tracer")
        if cur not in ("nop", None) and not self.force:
            raise CaptureError(f"ftrace is in use: {tr}/current_tracer is '{cur}' (another capture or tool?); "
                               "stop it first, or pass --force to take it over")
        if "blk" not in (_read(tr / "available_tracers", "") or "").split():
            raise CaptureError(f"the kernel has no ftrace 'blk' tracer ({tr}/available_tracers); "
                               "it needs CONFIG_BLK_DEV_IO_TRACE")
        for d in self.devices:
            if not Path(f"/sys/block/{d.name}/trace/enable").exists():
                raise CaptureError(f"/sys/block/{d.name}/trace/enable is missing: cannot trace {d.path}")
        self.saved = {
            "tracing_on": _read(tr / "tracing_on") or "1",
            "trace_clock": next((w.strip("[]") for w in (_read(tr / "trace_clock") or "").split() if w.startswith("[")),
                                "local"),
            "buffer_size_kb": (_read(tr / "buffer_size_kb") or "").split()[0] if _read(tr / "buffer_size_kb") else "",
            "options": " ".join(filter(None, (self._opt_state(o) for o in ("bin", "context-info", "overwrite")))),
        }
        self.started = True
        _write(tr / "tracing_on", "0")
        _write(tr / "current_tracer", "nop")
        _write(tr / "trace_clock", "mono")
        if self.buffer_kb:
            _write(tr / "buffer_size_kb", str(self.buffer_kb))
        _write(tr / "current_tracer", "blk")
        for d in self.devices:
            _write(f"/sys/block/{d.name}/trace/act_mask", ACT_MASK)
            _write(f"/sys/block/{d.name}/trace/enable", "1")
            self.enabled.append(d.name)
        for o in ("bin", "nocontext-info", "nooverwrite"):
            _write(tr / "trace_options", o)
        _write(tr / "trace", "")  # empty the buffer of older events
        self.outdir.mkdir(parents=True, exist_ok=True)
        for c in online_cpus(tr):
            rd = _PipeReader(tr / "per_cpu" / f"cpu{c}" / "trace_pipe", self.outdir / f"{self.prefix}.blktrace.{c}",
                             self.stop_ev)
            rd.start()
            self.readers.append(rd)
        _write(tr / "tracing_on", "1")

    def _cpu_stats(self) -> dict:
        out = {}
        for c in online_cpus(self.tr):
            kv = {}
            for line in (_read(self.tr / "per_cpu" / f"cpu{c}" / "stats", "") or "").splitlines():
                k, _, v = line.partition(":")
                kv[k.strip()] = v.strip()
            out[f"cpu{c}"] = kv
        return out

    def stop(self) -> dict:
        """Stop tracing, drain every CPU's buffer, restore ftrace. Returns per-CPU stats (overruns, drops)."""
        if not self.started:
            return {}
        tr = self.tr
        try:
            _write(tr / "tracing_on", "0")
            for _ in range(50):  # wait until the readers emptied the buffers
                st = self._cpu_stats()
                if all(int(v.get("entries", "0") or 0) == 0 for v in st.values()):
                    break
                time.sleep(0.1)
            self.stats = self._cpu_stats()
        finally:
            self.stop_ev.set()
            for rd in self.readers:
                rd.join(timeout=10)
            self._restore()
        return self.stats

    def _restore(self) -> None:
        tr = self.tr
        for name in self.enabled:
            with contextlib.suppress(OSError):
                _write(f"/sys/block/{name}/trace/enable", "0")
        self.enabled = []
        for o in ("nobin", "context-info", "overwrite"):
            with contextlib.suppress(OSError):
                _write(tr / "trace_options", o)
        for o in (self.saved.get("options") or "").split():
            with contextlib.suppress(OSError):
                _write(tr / "trace_options", o)
        for key in ("current_tracer", "trace_clock", "buffer_size_kb", "tracing_on"):
            val = "nop" if key == "current_tracer" else self.saved.get(key)
            if val:
                with contextlib.suppress(OSError):
                    _write(tr / key, val)
        self.started = False

    def bytes_written(self) -> int:
        return sum(r.bytes for r in self.readers)

    def errors(self) -> list[str]:
        return [r.error for r in self.readers if r.error]

    def lost_events(self) -> int:
        n = 0
        for v in self.stats.values():
            for k in ("overrun", "dropped events"):
                with contextlib.suppress(ValueError):
                    n += int(v.get(k, "0") or 0)
        return n


class BlktraceRecorder:
    """The blktrace tool (relay files in debugfs), one process per device: ``<prefix>.blktrace.<cpu>``."""

    kind = "blktrace"

    def __init__(self, devices: list[HostDevice], outdir: Path, prefix: str = "host"):
        self.devices, self.outdir, self.prefix = devices, Path(outdir), prefix
        self.procs: list[tuple[subprocess.Popen, HostDevice, str]] = []
        self.stats: dict = {}
        self.logs: dict[str, str] = {}

    def prefix_of(self, d: HostDevice) -> str:
        return self.prefix if len(self.devices) == 1 else f"{self.prefix}-{d.name}"

    def files_glob(self) -> str:
        return f"{self.prefix}.blktrace.*" if len(self.devices) == 1 else f"{self.prefix}-*.blktrace.*"

    def start(self, probe_s: float = 1.0) -> None:
        """Start one blktrace per device; raises CaptureError when one exits within ``probe_s`` (lockdown...)."""
        exe = shutil.which("blktrace")
        if not exe:
            raise CaptureError("blktrace is not installed")
        self.outdir.mkdir(parents=True, exist_ok=True)
        for d in self.devices:
            pre = self.prefix_of(d)
            log = self.outdir / f".{pre}.blktrace.log"
            fh = open(log, "w")  # noqa: SIM115 (blktrace writes it; read at stop)
            p = subprocess.Popen([exe, "-d", d.path, "-o", pre, "-D", str(self.outdir)], stdout=fh,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.procs.append((p, d, str(log)))
        time.sleep(probe_s)
        dead = [(p, d, log) for p, d, log in self.procs if p.poll() is not None]
        if dead:
            msg = "; ".join(f"{d.path}: {(_read(log) or 'exit ' + str(p.returncode)).splitlines()[0][:200]}"
                            for p, d, log in dead)
            self.stop()
            for pre in {self.prefix_of(d) for _, d, _ in self.procs}:
                for f in self.outdir.glob(f"{pre}.blktrace.*"):
                    f.unlink()
            raise CaptureError(f"blktrace failed: {msg}")

    def stop(self) -> dict:
        for p, _, _ in self.procs:
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: blktrace flushes and writes its summary
        for p, d, log in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            text = _read(log) or ""
            self.logs[d.name] = text
            self.stats[d.name] = {"exit": p.returncode, "summary": text.splitlines()[-3:]}
            with contextlib.suppress(OSError):
                os.unlink(log)
        return self.stats

    def bytes_written(self) -> int:
        return sum(f.stat().st_size for f in self.outdir.glob(self.files_glob()))

    def errors(self) -> list[str]:
        return []

    def lost_events(self) -> int:
        n = 0
        for text in self.logs.values():
            for line in text.splitlines():
                if "events dropped" in line or "dropped" in line.lower():
                    for w in line.replace("(", " ").split():
                        if w.isdigit():
                            n += int(w)
                            break
        return n


def make_recorder(kind: str, devices: list[HostDevice], outdir: Path, force: bool = False,
                  buffer_kb: int = 16384, log=print):
    """``auto``: blktrace when debugfs is usable (no lockdown and blktrace starts), else the ftrace blk tracer."""
    if kind == "ftrace":
        rec = FtraceBlkRecorder(devices, outdir, force=force, buffer_kb=buffer_kb)
        rec.start()
        return rec
    if kind == "blktrace":
        rec = BlktraceRecorder(devices, outdir)
        rec.start()
        return rec
    lk = lockdown()
    if lk not in (None, "none"):
        log(f"kernel lockdown={lk}: debugfs blktrace is blocked, using the ftrace blk tracer")
        return make_recorder("ftrace", devices, outdir, force, buffer_kb, log)
    if shutil.which("blktrace") and os.path.isdir("/sys/kernel/debug/block"):
        try:
            return make_recorder("blktrace", devices, outdir, force, buffer_kb, log)
        except CaptureError as e:
            log(f"{e}; using the ftrace blk tracer instead")
    return make_recorder("ftrace", devices, outdir, force, buffer_kb, log)


# -------------------------------------------------------------------------------------------------- threads
def pid_running(pid: int) -> bool:
    stat_ = _read(f"/proc/{pid}/stat")
    if not stat_:
        return False
    state = stat_.rpartition(")")[2].split()[:1]
    return state != ["Z"] and state != ["X"]


class ThreadSampler(threading.Thread):
    """Samples ``/proc/PID/task`` of each QEMU process every ``interval`` s: tid -> pid, role, comm, first/last seen."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True, name="thread-sampler")
        self.interval = interval
        self.pids: dict[int, str] = {}
        self.seen: dict[int, dict] = {}
        self.stop_ev = threading.Event()
        self.samples = 0

    def add(self, pid: int, role: str) -> None:
        self.pids[pid] = role
        self.sample()

    def alive(self) -> list[int]:
        """Pids still running (a zombie, exited but not yet reaped by its parent, is not)."""
        return [p for p in self.pids if pid_running(p)]

    def sample(self) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for pid, role in list(self.pids.items()):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            refresh = self.samples % 50 == 0  # names are read for new threads, and again now and then
            for t in tids:
                tid = int(t)
                e = self.seen.get(tid)
                if e is None or e["pid"] != pid:
                    comm = _read(f"/proc/{pid}/task/{tid}/comm")
                    if comm is None:
                        continue
                    self.seen[tid] = {"tid": tid, "pid": pid, "role": role, "comm": comm,
                                      "first_seen_mono_ns": now, "last_seen_mono_ns": now}
                else:
                    e["last_seen_mono_ns"] = now
                    if refresh:
                        e["comm"] = _read(f"/proc/{pid}/task/{tid}/comm") or e["comm"]
        self.samples += 1

    def run(self) -> None:
        while not self.stop_ev.wait(self.interval):
            self.sample()

    def write(self, path: Path) -> int:
        rows = sorted(self.seen.values(), key=lambda e: (e["pid"], e["tid"]))
        with open(path, "w") as f:
            f.write("tid\tpid\trole\tcomm\tfirst_seen_mono_ns\tlast_seen_mono_ns\n")
            for e in rows:
                comm = e["comm"].replace("\t", " ").replace("\n", " ")
                f.write(f"{e['tid']}\t{e['pid']}\t{e['role']}\t{comm}\t{e['first_seen_mono_ns']}\t"
                        f"{e['last_seen_mono_ns']}\n")
        return len(rows)


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads: the recorder's readers included)."""
    t = os.times()
    return t.user + t.system


def qemu_img_map(image: str, fmt: str | None, outdir: Path, log=print) -> list[dict]:
    """``qemu-img map -U --output=json`` -> ``qemu-img-map.json`` (guest offset -> image offset); [] on failure."""
    if not shutil.which("qemu-img"):
        log("warning: qemu-img not found: guest offsets cannot be mapped to image file offsets")
        return []
    d, base = os.path.split(image)
    r = subprocess.run(["qemu-img", "map", "-U", "--output=json", "-f", fmt or "raw", base], cwd=d or ".",
                       capture_output=True, text=True)
    if r.returncode != 0:
        log(f"warning: qemu-img map {image}: {r.stderr.strip()[:300]}")
        return []
    (outdir / "qemu-img-map.json").write_text(r.stdout)
    return [{"kind": "qemu-img-map", "file": "qemu-img-map.json"}]


def image_mapping(image: str, fmt: str | None, outdir: Path, log=print) -> list[dict]:
    """``qemu-img map --output=json`` (guest offset -> file offset) and ``filefrag -v`` (file -> device blocks).

    Both run beside the image so only its name is recorded. ``-U`` (force-share): the running QEMU holds the
    image lock. Returns the mapping steps for traceset.toml (empty when a tool is missing).
    """
    steps = qemu_img_map(image, fmt, outdir, log)
    d, base = os.path.split(image)
    if not shutil.which("filefrag"):
        log("warning: filefrag not found (e2fsprogs): image file offsets cannot be mapped to device blocks")
        return []
    r = subprocess.run(["filefrag", "-v", base], cwd=d or ".", capture_output=True, text=True)
    if r.returncode == 0 and ("delalloc" in r.stdout or "unknown_loc" in r.stdout):
        # delayed allocation: blocks not chosen yet; FIEMAP_FLAG_SYNC writes the file back first (after tracing)
        log("note: the image has delayed-allocation extents; re-reading its map with filefrag -s (syncs the file)")
        r = subprocess.run(["filefrag", "-s", "-v", base], cwd=d or ".", capture_output=True, text=True)
    if r.returncode != 0:
        log(f"warning: filefrag -v {image}: {r.stderr.strip()[:300]}")
        return []
    (outdir / "filefrag.txt").write_text(r.stdout)
    steps.append({"kind": "extents", "file": "filefrag.txt"})
    return steps
