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


def infer(da) -> dict:
    """{"mode", "declared", "agrees", "evidence": {...}} for one disk; mode None when it cannot be told."""
    ev: dict = {}
    g = da.df_guest_requests() if da.guest_traces else None
    gw = int((g["op"] == "write").sum()) if g is not None else 0
    gf = int((g["op"] == "flush").sum()) if g is not None else 0
    ev["guest_writes"], ev["guest_flushes"] = gw, gf
    ev["direct_io_share"] = None if da.direct_share is None else round(da.direct_share, 3)
    mode = None
    if g is None or not da.host_traces:
        ev["why"] = "needs the guest and host block traces"
    elif gf == 0:
        if gw == 0:
            ev["why"] = "no guest writes"
        else:
            mode = "directsync" if da.inferred_direct else "writethrough"
    else:
        f = da.df_flushes()
        f = f[f["new_writes"] > 0]
        judged = f[f["host_flushes"] >= 0]
        fwd = int(((judged["host_flushes"] > 0) | (judged["host_flush_bios"] > 0)).sum())
        ev["flushes_with_new_data"], ev["forwarded"] = int(len(judged)), fwd
        if len(judged) == 0:
            ev["why"] = "no guest flush with new data could be placed on the host clock"
        elif fwd / len(judged) < 0.2:
            mode = "unsafe"
        elif da.direct_share is None:
            ev["why"] = "cannot tell O_DIRECT from the page cache (no linked writes)"
        else:
            mode = "none" if da.inferred_direct else "writeback"
    declared = da.disk.cache
    return {"mode": mode, "declared": declared,
            "agrees": None if mode is None or declared is None else mode == declared, "evidence": ev}
