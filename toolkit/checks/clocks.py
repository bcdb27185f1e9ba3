"""Clock checks: ``clock-inconsistent`` when no offset satisfies the causal pairs between two traces."""

from __future__ import annotations

from toolkit.checks import Violation


def check(da) -> list[Violation]:
    off = da.guest_offset
    if off is None:
        return []
    out = []
    for c in off.conflicts:
        sent = (f"around guest time {c['guest_ns'] / 1e9:.3f} s the {c['pairs']} causal pairs between the guest "
                f"trace and QEMU need an offset of at least {c['lo_ns']} ns and at most {c['hi_ns']} ns: no single "
                f"alignment fits, so timings across these traces are not trusted there")
        out.append(Violation("clock-inconsistent", f"{off.clock.split(':')[0]},{off.ref.split(':')[0]}", "guest-block",
                             None, None, None, None, [], False, sent, da.name, c))
    return out
