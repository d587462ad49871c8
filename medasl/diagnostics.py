"""Diagnostics as data, and their two renderings: text with source snippets, and JSON.

Every stage reports problems by appending `Diagnostic`s to a `Diagnostics` list instead
of raising, so that one run reports every error it can find. Rendering is separate:
`render_text` draws source lines with carets (like rustc), `render_json` gives the same
data to editors and scripts. The codes and their long explanations are in `codes.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from medasl.source import SourceFile, Span


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Label:
    """A span with a short message; the primary label is underlined with `^`."""

    span: Span
    message: str = ""
    primary: bool = True


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    labels: tuple[Label, ...] = ()
    help: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def span(self) -> Span | None:
        """The primary span, where the diagnostic is said to be."""
        for label in self.labels:
            if label.primary:
                return label.span
        return self.labels[0].span if self.labels else None

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "labels": [
                {"span": lb.span.to_json(), "message": lb.message, "primary": lb.primary}
                for lb in self.labels
            ],
            "help": self.help,
            "notes": list(self.notes),
        }


@dataclass
class Diagnostics:
    """An ordered collection that every compiler stage appends to."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, message: str, *labels: Label, help: str | None = None,
              notes: Iterable[str] = ()) -> None:
        self.items.append(Diagnostic(code, Severity.ERROR, message, labels, help, tuple(notes)))

    def warning(self, code: str, message: str, *labels: Label, help: str | None = None,
                notes: Iterable[str] = ()) -> None:
        self.items.append(Diagnostic(code, Severity.WARNING, message, labels, help, tuple(notes)))

    def extend(self, other: Diagnostics) -> None:
        self.items.extend(other.items)

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.ERROR]

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def sorted(self) -> list[Diagnostic]:
        """Errors and warnings in source order (then in the order they were found)."""

        def key(indexed: tuple[int, Diagnostic]) -> tuple[str, int, int, int]:
            index, diag = indexed
            span = diag.span
            if span is None:
                return ("", 0, 0, index)
            return (span.file, span.line, span.column, index)

        return [d for _, d in sorted(enumerate(self.items), key=key)]


def label(span: Span, message: str = "") -> Label:
    return Label(span, message, primary=True)


def secondary(span: Span, message: str = "") -> Label:
    return Label(span, message, primary=False)


# ----- text rendering ----------------------------------------------------------


def render_text(diag: Diagnostic, sources: Mapping[str, SourceFile]) -> str:
    """Render one diagnostic as text: header, location, annotated source lines, help."""
    out = [f"{diag.severity.value}[{diag.code}]: {diag.message}"]
    primary = diag.span
    labelled = [lb for lb in diag.labels if lb.span.file in sources]
    if primary is not None:
        gutter = " " * len(str(max(lb.span.line for lb in diag.labels)))
        out.append(f"{gutter}--> {primary}")
        by_file: dict[str, list[Label]] = {}
        for lb in labelled:
            by_file.setdefault(lb.span.file, []).append(lb)
        for file_name, labels in by_file.items():
            if file_name != primary.file:
                out.append(f"{gutter}::: {labels[0].span}")
            out.extend(_snippet(sources[file_name], labels, gutter))
    else:
        gutter = " "
    if diag.help or diag.notes:
        if primary is not None and labelled:
            out.append(f"{gutter} |")
        out.extend(f"{gutter} = note: {note}" for note in diag.notes)
        if diag.help:
            out.append(f"{gutter} = help: {diag.help}")
    return "\n".join(out)


def _snippet(source: SourceFile, labels: list[Label], gutter: str) -> list[str]:
    """Source lines of one file with their labels underlined; gaps shown as '...'."""
    lines = [f"{gutter} |"]
    by_line: dict[int, list[Label]] = {}
    for lb in labels:
        by_line.setdefault(lb.span.line, []).append(lb)
    previous = None
    for number in sorted(by_line):
        if previous is not None and number > previous + 1:
            lines.append("...")
        text = source.line(number).rstrip()
        lines.append(f"{str(number).rjust(len(gutter))} | {text}".rstrip())
        for lb in sorted(by_line[number], key=lambda x: (not x.primary, x.span.column)):
            start = lb.span.column
            end = lb.span.end_column if lb.span.end_line == lb.span.line else len(text) + 1
            width = max(1, min(end, len(text) + 1) - start)
            mark = ("^" if lb.primary else "-") * width
            lines.append(f"{gutter} | {' ' * (start - 1)}{mark} {lb.message}".rstrip())
        previous = number
    return lines


def render_all_text(diags: Iterable[Diagnostic], sources: Mapping[str, SourceFile]) -> str:
    rendered = [render_text(d, sources) for d in diags]
    return "\n\n".join(rendered)


def summary(diags: Diagnostics) -> str:
    """The closing line: 'N errors, M warnings' (empty when there is nothing to say)."""
    errors = sum(1 for d in diags if d.severity is Severity.ERROR)
    warnings = len(diags) - errors
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts)


def render_json(diags: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diags], indent=2)
