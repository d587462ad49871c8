"""Errors in the user's data, as opposed to bugs in medasl.

A reader or operator that meets a problem in the data (a missing or corrupt file, a
folder with several DICOM series, unpaired images and labels, geometry that disagrees,
NaN values) raises `DataError`. The executor turns it into a diagnostic that names the
file and the `.medas` line of the node that asked for it, never a traceback; anything
else that escapes an operator is a bug and keeps its traceback.

Codes are in the E1xxx range (data) and E2xxx range (running: a diverging training,
labels a network cannot predict); the front end's codes are E0xxx. Each is explained in
medasl/codes.py (`medasc explain E1004`), which is the one list of them.
"""

from __future__ import annotations

from pathlib import Path

from medasl.codes import CODES

DATA_CODES = tuple(code for code in CODES if code.startswith(("E1", "E2")))


class DataError(Exception):
    """A problem in the user's data, reported as a diagnostic rather than a traceback.

    `code` is one of `DATA_CODES`; `message` says what is wrong in the user's terms and
    names the file; `path` is the file or folder at fault (for the diagnostic's location
    and for tools), `help` says what to do about it, when there is something to say.
    """

    def __init__(self, code: str, message: str, path: str | Path | None = None, help: str | None = None) -> None:
        if code not in DATA_CODES:
            raise ValueError(f"unknown data error code {code!r}")
        super().__init__(code, message, None if path is None else str(path), help)
        self.code = code
        self.message = message
        self.path = None if path is None else str(path)
        self.help = help

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        return f"{text}\n  help: {self.help}" if self.help else text

    def __repr__(self) -> str:
        return f"DataError({self.code!r}, {self.message!r}, path={self.path!r}, help={self.help!r})"


class Interrupted(KeyboardInterrupt):
    """The user pressed Ctrl-C: the run stopped at the next safe point (a training at its
    next batch), everything finished is committed. `notes` say what was kept, in the
    user's terms ("`fit` stopped in epoch 5 of 40: its 4 finished epochs are kept").

    A `KeyboardInterrupt`, so that whatever handles Ctrl-C handles it, and `except
    Exception` in an operator never swallows it."""

    def __init__(self, *notes: str) -> None:
        super().__init__(*notes)
        self.notes = list(notes)
