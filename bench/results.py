"""bench/RESULTS.md: one section per benchmark, each with one table; rows go at the end of their table.

Every benchmark script calls `add_row(section, header, row)`. A missing file, section or table is
created (a new section goes at the end of the file), so the scripts can run in any order without
one's rows landing in another's table.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Measured speed and memory\n"


def command_line(module: str, argv) -> str:
    """The command line that produced a row (its last column): `python -m MODULE ARGS...`."""
    return f"python -m {module} " + shlex.join(argv)


def plain(value):
    """Numbers as the reader wants them in a row: numpy scalars as Python ones, floats rounded."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    return round(value, 4) if isinstance(value, float) else value


def numbers(params: dict, skip: tuple[str, ...] = ()) -> dict:
    """The numeric settings of a result's params, for a row (flags and texts left out)."""
    return {k: plain(v) for k, v in params.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def add_row(section: str, header: str, row: str, intro: str = "", path: Path | None = None) -> None:
    """Append `row` (one markdown table line) to the table of `section` ("## Name") in RESULTS.md.

    `header` is the table's two header lines, written with `intro` above them when the section
    or its table is new.
    """
    path = Path(path) if path else RESULTS
    row = row.rstrip("\n") + "\n"
    text = path.read_text() if path.exists() else TITLE
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == section), None)
    if start is None:
        block = ["\n", section + "\n", "\n"] + ([intro.rstrip("\n") + "\n", "\n"] if intro else [])
        path.write_text("".join(lines + block) + header + row)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    table = [i for i in range(start + 1, end) if lines[i].startswith("|")]
    if not table:
        insert = end
        while insert > start + 1 and not lines[insert - 1].strip():
            insert -= 1
        new = ["\n"] + ([intro.rstrip("\n") + "\n", "\n"] if intro else []) + [header, row]
        lines[insert:insert] = new + (["\n"] if insert < len(lines) else [])
    else:
        lines.insert(table[-1] + 1, row)
    path.write_text("".join(lines))


def run_cli(main) -> int:
    """A benchmark script's exit code, as `python -m engine` gives it: bad input (a ValueError from
    the method's checks) is one readable line on stderr and exit code 2, not a traceback."""
    try:
        return main()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
