"""Effective cache-mode inference from behaviour alone, compared with the declared mode.

Evidence per disk (DiskAnalysis):

* guest write cache: does the guest send flushes at all? (writethrough/directsync show the guest a disk
  without a volatile cache, and the guest sends none);
* forwarding: of the guest flushes that promised new data, how many saw a flush of the host device while
  QEMU handled them? (none with cache=unsafe);
* direct: are guest writes carried by host writes issued while QEMU's write was in flight (O_DIRECT), or
  later by page-cache writeback?

| guest flushes | forwarded | direct | mode         |
|---------------|-----------|--------|--------------|
| yes           | yes       | yes    | none         |
| yes           | yes       | no     | writeback    |
| yes           | no        | any    | unsafe       |
| no            | -         | yes    | directsync   |
| no            | -         | no     | writethrough |
"""

from __future__ import annotations

from collections.abc import Callable


def counts(da) -> dict:
    """The behaviour behind the inference, as counts that add up over time slices of one disk."""
    c: dict = {"has_guest": bool(da.guest_traces), "has_host": bool(da.host_traces), "guest_writes": 0,
               "guest_flushes": 0, "direct": da.direct_counts, "flushes_with_new_data": 0, "forwarded": 0}
    if da.guest_traces:
        g = da.df_guest_requests()
        c["guest_writes"], c["guest_flushes"] = int((g["op"] == "write").sum()), int((g["op"] == "flush").sum())
        if c["guest_flushes"] and da.host_traces:
            f = da.df_flushes()
            f = f[f["new_writes"] > 0]
            judged = f[f["host_flushes"] >= 0]
            c["flushes_with_new_data"] = int(len(judged))
            c["forwarded"] = int(((judged["host_flushes"] > 0) | (judged["host_flush_bios"] > 0)).sum())
    return c


def add_counts(a: dict, b: dict) -> dict:
    """The counts of two consecutive time slices of one disk, together."""
    out = dict(a)
    for k in ("guest_writes", "guest_flushes", "flushes_with_new_data", "forwarded"):
        out[k] = a[k] + b[k]
    da_, db = a["direct"], b["direct"]
    out["direct"] = da_ if db is None else db if da_ is None else (da_[0] + db[0], da_[1] + db[1])
    return out


def infer(da) -> dict:
    """{"mode", "declared", "agrees", "evidence": {...}} for one disk; mode None when it cannot be told."""
    return decide(counts(da), da.disk.cache)


def write_cache_seen(disk, flushes: int, durable_by_ack: Callable[[], tuple[int, int]]) -> bool:
    """Does the guest see a volatile write cache (and so rely only on flushes and FUA)?

    The disk's ``guest_write_cache`` field if given; a guest that sends flushes (``flushes`` > 0) sees one; else
    the declared mode (writethrough/directsync: no); else inferred: no when the host made nearly every write
    durable before QEMU completed it (``durable_by_ack()``: (such writes, completed linked writes), asked only
    then). A guest that never flushes a write-back disk was promised nothing.
    """
    if disk.guest_write_cache is not None:
        return disk.guest_write_cache
    if flushes:
        return True
    if disk.cache is not None:
        return disk.cache not in ("writethrough", "directsync")
    fast, n = durable_by_ack()
    return not (n and fast / n >= 0.9)


def direct_share(c: dict) -> float | None:
    return None if c["direct"] is None else c["direct"][0] / c["direct"][1]


def is_direct(c: dict, declared: str | None) -> bool:
    """Host writes carry guest writes synchronously (O_DIRECT), as DiskAnalysis.inferred_direct."""
    share = direct_share(c)
    if share is None:
        return (declared or "none") in ("none", "directsync")
    return share >= 0.8


def decide(c: dict, declared: str | None) -> dict:
    """The inference from :func:`counts`."""
    ev: dict = {}
    gw, gf = c["guest_writes"], c["guest_flushes"]
    ev["guest_writes"], ev["guest_flushes"] = gw, gf
    share = direct_share(c)
    ev["direct_io_share"] = None if share is None else round(share, 3)
    mode = None
    if not c["has_guest"] or not c["has_host"]:
        ev["why"] = "needs the guest and host block traces"
    elif gf == 0:
        if gw == 0:
            ev["why"] = "no guest writes"
        else:
            mode = "directsync" if is_direct(c, declared) else "writethrough"
    else:
        judged, fwd = c["flushes_with_new_data"], c["forwarded"]
        ev["flushes_with_new_data"], ev["forwarded"] = judged, fwd
        if judged == 0:
            ev["why"] = "no guest flush with new data could be placed on the host clock"
        elif fwd / judged < 0.2:
            mode = "unsafe"
        elif share is None:
            ev["why"] = "cannot tell O_DIRECT from the page cache (no linked writes)"
        else:
            mode = "none" if is_direct(c, declared) else "writeback"
    return {"mode": mode, "declared": declared,
            "agrees": None if mode is None or declared is None else mode == declared, "evidence": ev}
