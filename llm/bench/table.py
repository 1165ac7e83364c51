"""Rows (dicts) as a plain-text table for the terminal or a markdown table for docs."""

from __future__ import annotations


def short(v) -> str:
    """A cell: floats to 3 significant digits (no exponent below 1e6), None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def text_table(rows: list[dict], cols: list[str] | None = None, titles: dict | None = None,
               cells: dict | None = None) -> str:
    """Right-aligned columns `cols` (default: the first row's keys). titles: key -> heading;
    cells: key -> function(row) -> str, for cells made of several fields."""
    if not rows:
        return ""
    cols = cols or list(rows[0])
    titles, cells = titles or {}, cells or {}
    grid = [[cells[c](r) if c in cells else short(r.get(c)) for c in cols] for r in rows]
    heads = [titles.get(c, c) for c in cols]
    widths = [max(len(h), *(len(line[i]) for line in grid)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in grid]
    return "\n".join(lines)


def print_rows(rows: list[dict]) -> None:
    """Rows as right-aligned columns, numbers to 3 significant digits."""
    if rows:
        print(text_table(rows))


def markdown_table(rows: list[dict], cols: list[str], titles: dict | None = None,
                   align: str | None = None, float_spec: str = ".2f",
                   specs: dict | None = None) -> str:
    """A markdown table of `cols` (keys of `rows`). titles: key -> column title (default the
    key); align: one letter per column, l or r (default plain `---`); floats are formatted
    with specs[key], else `float_spec` ("" prints them as str does); None is '-'."""
    titles, specs = titles or {}, specs or {}
    seps = ["---:" if a == "r" else "---" for a in align] if align else ["---"] * len(cols)
    lines = ["| " + " | ".join(titles.get(c, c) for c in cols) + " |", "|" + "".join(s + "|" for s in seps)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if v is None:
                cells.append("-")
            elif isinstance(v, float):
                cells.append(format(v, specs.get(c, float_spec)))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
