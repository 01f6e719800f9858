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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .deps_file import DepsFileError, merge_deps, read_deps, write_deps
from .durations_file import DurationsFileError, merge_durations, read_durations, write_durations
from .timeline import ReportFileError, read_report, write_timeline


@dataclass(frozen=True)
class _Merge:
    """One ``merge-*`` command: the files it merges and how, with the words it prints."""

    kind: str
    """What the files are called in messages (``durations``, ``deps``)."""
    counted: str
    """What a merged entry is called (``items``, ``scripts``)."""
    merge: Callable[[list[Path], Path], int]
    """Read the inputs, merge them, write the output; the number of entries written."""
    error: type[Exception]
    """What reading a file of this kind raises for a file that is not one."""


def _merge_durations(inputs: list[Path], out: Path) -> int:
    merged = merge_durations(read_durations(path) for path in inputs)
    write_durations(out, merged)
    return len(merged)


def _merge_deps(inputs: list[Path], out: Path) -> int:
    merged = merge_deps(read_deps(path) for path in inputs)
    write_deps(out, merged)
    return len(merged)


_MERGES = {
    "merge-durations": _Merge("durations", "items", _merge_durations, DurationsFileError),
    "merge-deps": _Merge("deps", "scripts", _merge_deps, DepsFileError),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_codomyrmex_exec")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_, description in (
        (
            "merge-durations",
            "merge durations files: the newest measurement of each item wins",
            "Merge durations files (--exec-durations-file) from several shards into OUT: "
            "the newest measurement of each item wins. OUT may be one of the INs.",
        ),
        (
            "merge-deps",
            "merge deps files: each script's latest run wins",
            "Merge deps files (--exec-deps-file) from several shards into OUT: "
            "each script's latest run wins. OUT may be one of the INs.",
        ),
    ):
        merge = commands.add_parser(name, help=help_, description=description)
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
    args = parser.parse_args(argv)
    if args.command == "timeline":
        return _timeline(parser, args.results, args.output)
    return _run_merge(parser, args.command, args.out, args.inputs)


def _run_merge(parser: argparse.ArgumentParser, command: str, out: Path, inputs: list[Path]) -> int:
    merge = _MERGES[command]
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        parser.error(f"no such {merge.kind} file: {', '.join(missing)}")
    try:
        count = merge.merge(inputs, out)
    except (merge.error, OSError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    print(f"{command}: {count} {merge.counted} from {len(inputs)} files in {out}")
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


if __name__ == "__main__":
    sys.exit(main())
