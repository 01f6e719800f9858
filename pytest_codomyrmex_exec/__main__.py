"""``python -m pytest_codomyrmex_exec``: tools that work on the plugin's files without pytest.

``merge-durations OUT IN...`` merges the durations files written by several shards of a run
(``--exec-durations-file``) into one: the newest measurement of each item wins.
``merge-deps OUT IN...`` does the same for ``--exec-deps-file``: each script's latest run wins.

``timeline RESULTS [-o PAGE]`` draws the run a results file (``--exec-report``) recorded as
the page ``--exec-timeline`` writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .deps_file import DepsFileError, merge_deps, read_deps, write_deps
from .durations_file import DurationsFileError, merge_durations, read_durations, write_durations
from .timeline import ReportFileError, read_report, write_timeline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_codomyrmex_exec")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge-durations",
        help="merge durations files: the newest measurement of each item wins",
        description="Merge durations files (--exec-durations-file) from several shards "
        "into OUT: the newest measurement of each item wins. OUT may be one of the INs.",
    )
    merge.add_argument("out", metavar="OUT", type=Path)
    merge.add_argument("inputs", metavar="IN", type=Path, nargs="+")
    timeline = commands.add_parser(
        "timeline",
        help="draw a results file (--exec-report) as a timeline page",
        description="Draw the run that a results file (--exec-report) recorded as the HTML "
        "page --exec-timeline writes: a lane per worker slot, a bar per script.",
    )
    timeline.add_argument("results", metavar="RESULTS", type=Path)
    timeline.add_argument(
        "-o",
        "--output",
        metavar="PAGE",
        type=Path,
        help="the page to write (default: RESULTS with .html for its suffix)",
    )
    deps = commands.add_parser(
        "merge-deps",
        help="merge deps files: each script's latest run wins",
        description="Merge deps files (--exec-deps-file) from several shards into OUT: "
        "each script's latest run wins. OUT may be one of the INs.",
    )
    deps.add_argument("out", metavar="OUT", type=Path)
    deps.add_argument("inputs", metavar="IN", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "timeline":
        return _timeline(parser, args.results, args.output)
    if args.command == "merge-deps":
        return _merge_deps(parser, args.out, args.inputs)

    missing = [str(path) for path in args.inputs if not path.is_file()]
    if missing:
        parser.error(f"no such durations file: {', '.join(missing)}")
    try:
        merged = merge_durations(read_durations(path) for path in args.inputs)
        write_durations(args.out, merged)
    except (DurationsFileError, OSError) as exc:
        print(f"merge-durations: {exc}", file=sys.stderr)
        return 1
    print(f"merge-durations: {len(merged)} items from {len(args.inputs)} files in {args.out}")
    return 0


def _timeline(parser: argparse.ArgumentParser, results: Path, page: Path | None) -> int:
    if not results.is_file():
        parser.error(f"no such results file: {results}")
    page = page if page is not None else results.with_suffix(".html")
    try:
        header, lines = read_report(results)
        write_timeline(page, header, lines)
    except (ReportFileError, OSError) as exc:
        print(f"timeline: {exc}", file=sys.stderr)
        return 1
    count = len(lines)
    print(f"timeline: {count} script{'s' if count != 1 else ''} from {results} in {page}")
    return 0


def _merge_deps(parser: argparse.ArgumentParser, out: Path, inputs: list[Path]) -> int:
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        parser.error(f"no such deps file: {', '.join(missing)}")
    try:
        merged = merge_deps(read_deps(path) for path in inputs)
        write_deps(out, merged)
    except (DepsFileError, OSError) as exc:
        print(f"merge-deps: {exc}", file=sys.stderr)
        return 1
    print(f"merge-deps: {len(merged)} scripts from {len(inputs)} files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
