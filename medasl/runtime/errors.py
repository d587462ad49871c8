"""Errors in the user's data, as opposed to bugs in medasl.

A reader or operator that meets a problem in the data (a missing or corrupt file, a
folder with several DICOM series, unpaired images and labels, geometry that disagrees,
NaN values) raises `DataError`. The executor turns it into a diagnostic that names the
file and the `.medas` line of the node that asked for it, never a traceback; anything
else that escapes an operator is a bug and keeps its traceback.

Codes are in the E1xxx range (the front end's codes are E0xxx):

    E1001  missing file or folder
    E1002  unreadable, corrupt or truncated image
    E1003  not a DICOM file, or no DICOM series in a folder
    E1004  several DICOM series in a folder, none chosen with `uid=`
    E1005  an empty folder, or a pattern that matched nothing
    E1006  images without labels or labels without images
    E1007  image and label geometry disagree
    E1008  NaN or infinite values
    E1009  a label file that is not a label map (fractional values, several channels)
    E1010  DICOM slices not evenly spaced or not parallel (missing or mixed slices)
"""

from __future__ import annotations

from pathlib import Path

DATA_CODES = ("E1001", "E1002", "E1003", "E1004", "E1005", "E1006", "E1007", "E1008", "E1009", "E1010")


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
