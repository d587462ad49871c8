"""Source files and spans: where every AST node, IR node and diagnostic points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFile:
    """The text of one `.medas` file, with its display name."""

    name: str
    text: str

    @classmethod
    def read(cls, path: str | Path) -> SourceFile:
        # utf-8-sig: a byte-order mark some editors write is not part of the text
        return cls(name=str(path), text=Path(path).read_text(encoding="utf-8-sig"))

    def line(self, number: int) -> str:
        """Line `number` (1-based), without its newline; '' past the end."""
        lines = self.text.splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns are 1-based, `end_column` exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Span:
        return cls(str(data["file"]), int(data["line"]), int(data["column"]),  # type: ignore[arg-type]
                   int(data["end_line"]), int(data["end_column"]))  # type: ignore[arg-type]
