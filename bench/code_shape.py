"""The shape of the code (issue 18): lines per module and per banner section, and the longest functions.

Read-only and stdlib only (ast, tokenize), so the same script measures any checkout: run it on main before a
restructuring and again after, and put the two outputs side by side.

    python bench/code_shape.py                 # this checkout
    python bench/code_shape.py ../main         # another checkout
    python bench/code_shape.py --rev 772bd24   # a commit of this repository (read with git show, no checkout)
    python bench/code_shape.py --json          # for machines
    python bench/code_shape.py --top 30

A banner is a comment block opened and closed by a line of dashes (``# -----...``) at column 0; the first comment
line between them is the section's name. A section runs from its opening dashes to the line before the next
banner (or the end of the file); what comes before the first banner (docstring, imports, and any code left
unbannered) is "(before the first banner)".
Banners are found with tokenize, so a dashed line inside a string (the local supervisor's source, the report's
page) is not taken for one. A function's lines run from its ``def`` (decorators excluded) to its last line,
its docstring and nested functions included; nested functions are listed too, under ``outer.inner``.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import subprocess
import sys
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODULES = ("mini_swe_runner.py", "environments.py", "trajectory.py", "report.py")
"""The product's modules, in the order the issue names them."""

DASHES = re.compile(r"#\s*-{10,}\s*$")
PREAMBLE = "(before the first banner)"


@dataclass
class Section:
    name: str
    first_line: int
    lines: int = 0


@dataclass
class Function:
    module: str
    name: str
    """Qualified within the module: ``Class.method``, ``outer.inner``."""
    first_line: int
    lines: int
    section: str


@dataclass
class ModuleShape:
    module: str
    lines: int
    sections: list[Section] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)


def banner_sections(source: str) -> list[Section]:
    """The module's sections in order, each with its line count (they add up to the module's lines)."""
    dashed = [
        token.start[0]
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and token.start[1] == 0 and DASHES.match(token.string)
    ]
    lines = source.splitlines()
    sections = [Section(PREAMBLE, 1)]
    index = 0
    while index + 1 < len(dashed):
        opening, closing = dashed[index], dashed[index + 1]
        # An opening and its closing dashes hold only comment lines; anything else between two dashed lines means
        # they belong to different banners (a lone separator), so the first is skipped rather than mis-paired.
        between = lines[opening : closing - 1]
        if not all(line.startswith("#") for line in between):
            index += 1
            continue
        name = next((line.lstrip("#").strip() for line in between if line.lstrip("#").strip()), "(unnamed)")
        sections.append(Section(name, opening))
        index += 2
    if sections[1:] and sections[1].first_line == 1:
        sections.pop(0)
    for section, following in zip(sections, [*sections[1:], None], strict=True):
        end = following.first_line if following else len(lines) + 1
        section.lines = end - section.first_line
    return [section for section in sections if section.lines > 0]


def functions_of(module: str, tree: ast.Module, sections: list[Section]) -> list[Function]:
    """Every function and method, with its qualified name and the section it starts in."""
    found: list[Function] = []

    def section_at(line: int) -> str:
        name = sections[0].name if sections else PREAMBLE
        for section in sections:
            if section.first_line <= line:
                name = section.name
        return name

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                found.append(Function(module, name, child.lineno, lines, section_at(child.lineno)))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def read_module(root: Path, module: str, rev: str | None) -> str | None:
    """The module's text in the checkout, or at ``rev`` of the checkout's repository; None if it has none."""
    if rev is None:
        path = root / module
        return path.read_text(encoding="utf-8") if path.exists() else None
    shown = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{module}"], capture_output=True)
    return shown.stdout.decode("utf-8") if shown.returncode == 0 else None


def measure(root: Path, rev: str | None = None) -> list[ModuleShape]:
    shapes = []
    for module in MODULES:
        source = read_module(root, module, rev)
        if source is None:
            continue
        sections = banner_sections(source)
        shape = ModuleShape(module, len(source.splitlines()), sections)
        shape.functions = functions_of(module, ast.parse(source, filename=module), sections)
        shapes.append(shape)
    return shapes


def longest(shapes: list[ModuleShape], top: int) -> list[Function]:
    every = [function for shape in shapes for function in shape.functions]
    return sorted(every, key=lambda function: (-function.lines, function.module, function.first_line))[:top]


def print_table(where: str, shapes: list[ModuleShape], top: int) -> None:
    total = sum(shape.lines for shape in shapes)
    print(f"Code shape of {where}")
    print()
    print(f"{'module':<22} {'lines':>6} {'sections':>8} {'functions':>9}")
    for shape in shapes:
        print(f"{shape.module:<22} {shape.lines:>6} {len(shape.sections):>8} {len(shape.functions):>9}")
    print(f"{'total':<22} {total:>6}")
    for shape in shapes:
        print()
        print(f"{shape.module}: lines per section")
        for section in shape.sections:
            name = section.name if len(section.name) <= 90 else section.name[:87] + "..."
            print(f"  {section.lines:>6}  line {section.first_line:<5}  {name}")
    print()
    print(f"The {top} longest functions and methods (def line to last line, nested ones included)")
    print(f"  {'lines':>5}  {'where':<28}  name")
    for function in longest(shapes, top):
        where = f"{function.module}:{function.first_line}"
        print(f"  {function.lines:>5}  {where:<28}  {function.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "root",
        nargs="?",
        default=str(Path(__file__).resolve().parent.parent),
        help="the checkout to measure (default: the one this script is in)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--rev", help="measure this commit of the checkout's repository instead of its files")
    parser.add_argument("--top", type=int, default=15, help="how many of the longest functions to list")
    args = parser.parse_args(argv)
    root = Path(args.root)
    where = str(root.resolve()) + (f" at {args.rev}" if args.rev else "")
    shapes = measure(root, args.rev)
    if not shapes:
        print(f"code_shape: none of {', '.join(MODULES)} is in {where}", file=sys.stderr)
        return 2
    if args.json:
        modules = {
            shape.module: {"lines": shape.lines, "sections": [asdict(section) for section in shape.sections]}
            for shape in shapes
        }
        report = {
            "root": str(root.resolve()),
            "rev": args.rev,
            "total_lines": sum(shape.lines for shape in shapes),
            "modules": modules,
            "longest_functions": [asdict(function) for function in longest(shapes, args.top)],
        }
        print(json.dumps(report, indent=2))
    else:
        print_table(where, shapes, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
