"""``writeorder`` command line: ingest | check | report | capture.

Exit codes: 0 success (``check``: no violations), 1 violations found, 2 bad input or usage (one line on stderr
naming the file and the place; no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from toolkit.fileio import TraceError


class _Bar:
    """A tqdm progress bar on stderr (only on a terminal), usable as the ``progress(msg)`` callback of
    ``store.ingest``: each call starts the next item and names it."""

    def __init__(self, total: int | None, desc: str, unit: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
        self.started = False

    def __call__(self, msg=None) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        if isinstance(msg, str):
            self.bar.set_postfix_str(msg[-60:], refresh=True)

    def tick(self, _done=None) -> None:
        self.bar.update(1)

    def close(self) -> None:
        if self.started and self.bar.total and self.bar.n < self.bar.total:
            self.bar.update(1)
        self.bar.close()


def _bar(total: int | None, desc: str, unit: str = "trace") -> _Bar | None:
    """A progress bar when stderr is a terminal, else None (quiet in pipes, CI and logs)."""
    if not sys.stderr.isatty():
        return None
    return _Bar(total, desc, unit)


def _close(*bars) -> None:
    for b in bars:
        if b is not None:
            b.close()


def _fleet(args) -> bool:
    return bool(getattr(args, "workers", None) or getattr(args, "scheduler", None))


def _set_path(args, p: str) -> str:
    """With a remote scheduler the workers see the set by its absolute path (a shared filesystem)."""
    import os

    return os.path.abspath(p) if getattr(args, "scheduler", None) else p


def cmd_ingest(args) -> int:
    from toolkit import ingest

    if len(args.set) == 1 and not _fleet(args):
        bar = _bar(None, "ingest")
        try:
            ts, summary = ingest.summarise_set(args.set[0], use_cache=not args.no_cache, progress=bar)
        finally:
            _close(bar)
        if args.json:
            print(json.dumps({"traceset": ts.name, "traces": summary}, indent=1, sort_keys=False))
        else:
            print(ingest.format_summary(ts, summary))
        return 0
    from toolkit import distributed

    loaded = distributed.load_sets([_set_path(args, p) for p in args.set])
    sets = [x for x in loaded if not isinstance(x, TraceError)]
    results: dict[int, list[dict]] = {}
    if _fleet(args) and sets:
        bar = _bar(sum(len(ts.traces) for ts in sets), "ingest")
        try:
            with distributed.engine(args.workers, args.scheduler) as client:
                got = distributed.ingest_sets(client, sets, use_cache=not args.no_cache,
                                              tick=bar.tick if bar else None)
            for ts, entries in zip(sets, got, strict=True):
                results[id(ts)] = ingest.summaries(ts, entries)
        finally:
            _close(bar)
    rc, docs, texts = 0, [], []
    bar = _bar(len(sets), "ingest", "set") if not _fleet(args) else None
    try:
        for x in loaded:
            if isinstance(x, TraceError):
                print(f"writeorder: {x}", file=sys.stderr)
                rc = 2
                continue
            if id(x) in results:
                summary = results[id(x)]
            else:
                _, summary = ingest.summarise_set(None, use_cache=not args.no_cache, ts=x)
                if bar:
                    bar.tick()
            docs.append({"traceset": x.name, "traces": summary})
            texts.append(ingest.format_summary(x, summary))
    finally:
        _close(bar)
    if args.json:  # one set: its document, as without dask; several: an array
        print(json.dumps(docs[0] if len(args.set) == 1 and docs else docs, indent=1, sort_keys=False))
    else:
        print("\n\n".join(texts))
    return rc


def cmd_check(args) -> int:
    from toolkit import slicing

    if len(args.set) == 1 and not _fleet(args):
        bar = _bar(None, "check", "step")  # traces ingested, then time slices analysed
        try:
            result = slicing.check_set(args.set[0], use_cache=not args.no_cache, progress=bar,
                                       slice_events=args.slice_events)
        finally:
            _close(bar)
        if args.json:
            print(json.dumps(result.to_json(), indent=1, sort_keys=True))
        else:
            print(result.to_text())
        return 1 if result.violation_count else 0
    paths = [_set_path(args, p) for p in args.set]
    if _fleet(args):
        from toolkit import distributed

        ibar = _bar(None, "ingest")
        cbar = None
        try:
            with distributed.engine(args.workers, args.scheduler) as client:
                cbar = _bar(len(paths), "check", "set")
                got = distributed.check_sets(client, paths, use_cache=not args.no_cache,
                                             slice_events=args.slice_events,
                                             tick=cbar.tick if cbar else None,
                                             ingest_tick=ibar.tick if ibar else None)
        finally:
            _close(ibar, cbar)
    else:
        got = []
        bar = _bar(len(paths), "check", "set")
        try:
            for p in paths:
                try:
                    r = slicing.check_set(p, use_cache=not args.no_cache, slice_events=args.slice_events)
                    got.append(r.rendered(p))
                except TraceError as e:
                    got.append({"path": p, "error": str(e)})
                if bar:
                    bar.tick()
        finally:
            _close(bar)
    return _print_checks(got, args.json, single=len(paths) == 1)


def _print_checks(got: list[dict], as_json: bool, single: bool = False) -> int:
    """Several sets: the texts one after another (blank line between), or one JSON array of the documents (one
    set: its document, as without dask). Exit 2 when any set could not be read, else 1 when any set has
    violations, else 0."""
    bad = [g for g in got if "error" in g]
    for g in bad:
        print(f"writeorder: {g['error']}", file=sys.stderr)
    ok = [g for g in got if "error" not in g]
    if as_json and single and ok:
        print(ok[0]["json"])
    elif as_json:
        print("[\n" + ",\n".join(g["json"] for g in ok) + "\n]" if ok else "[]")
    else:
        print("\n\n".join(g["text"] for g in ok))
    if bad:
        return 2
    return 1 if any(g["violations"] for g in ok) else 0


def cmd_report(args) -> int:
    from toolkit import report

    return report.main(args)


def cmd_capture(args) -> int:
    from toolkit import capture

    return capture.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="writeorder", description="Did every acknowledged write really reach stable "
                                "storage, in the order the guest relied on?")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ingest", help="parse every trace of a set into the Parquet store and summarise it")
    s.add_argument("set", nargs="+", help="trace set folder (with traceset.toml) or its manifest; several sets: "
                   "one summary each (--json: a JSON array)")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument("--no-cache", action="store_true", help="parse again, ignore and do not write the store")
    _engine_args(s)
    s.set_defaults(func=cmd_ingest)
    s = sub.add_parser("check", help="find durability and ordering violations")
    s.add_argument("set", nargs="+", help="trace set(s); several: exit 1 if any has violations, 2 if any cannot "
                   "be read; --json prints a JSON array")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--slice-events", type=int, default=4_000_000, metavar="N",
                   help="analyse a disk with more than N events one time slice of about N events at a time, "
                        "reading each from the Parquet store (memory bounded by the slice; 0: never)")
    _engine_args(s)
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("report", help="render the postmortem report (HTML)")
    s.add_argument("set", nargs="+")
    s.add_argument("-o", "--output", help="HTML file (one set) or folder (--batch)")
    s.add_argument("--batch", action="store_true", help="one report per set plus an index.html")
    s.add_argument("--window", help="START:END seconds on the reference clock")
    s.add_argument("--disk", help="disk name")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("capture", help="record the traces writeorder needs (host or guest side)")
    s.add_argument("side", choices=["host", "guest"])
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_capture)
    return p


def _engine_args(s) -> None:
    g = s.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, metavar="N", help="run on a local dask cluster of N worker processes "
                   "(one task per trace for ingest; for check one per disk, or per set with several QEMU processes)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing dask cluster (tcp://host:8786); the "
                   "workers must see the sets and their stores at the same (absolute) paths")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TraceError as e:
        print(f"writeorder: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("writeorder: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
