"""``writeorder`` command line: ingest | check | report | capture.

Exit codes: 0 success (``check``: no violations), 1 violations found, 2 bad input or usage (one line on stderr
naming the file and the place; no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from toolkit.fileio import TraceError


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    return lambda msg: print(f"  reading {msg}", file=sys.stderr, flush=True)


def cmd_ingest(args) -> int:
    from toolkit import ingest

    ts, summary = ingest.summarise_set(args.set, use_cache=not args.no_cache, progress=_progress(True))
    if args.json:
        print(json.dumps({"traceset": ts.name, "traces": summary}, indent=1, sort_keys=False))
    else:
        print(ingest.format_summary(ts, summary))
    return 0


def cmd_check(args) -> int:
    from toolkit import verdict

    result = verdict.check_set(args.set, use_cache=not args.no_cache, progress=_progress(True))
    if args.json:
        print(json.dumps(result.to_json(), indent=1, sort_keys=True))
    else:
        print(result.to_text())
    return 1 if result.violation_count else 0


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
    s = sub.add_parser("ingest", help="parse every trace of a set into the Parquet cache and summarise it")
    s.add_argument("set", help="trace set folder (with traceset.toml) or its manifest")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument("--no-cache", action="store_true", help="parse again, ignore and do not write the cache")
    s.set_defaults(func=cmd_ingest)
    s = sub.add_parser("check", help="find durability and ordering violations")
    s.add_argument("set")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-cache", action="store_true")
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
