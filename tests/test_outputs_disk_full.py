"""Files under --out are committed like cache entries: a full disk is a coded diagnostic
(E2010), never a traceback or a short file taken for a finished one, and the writer's
entry counts as done only while its files are there with their recorded size and sha256."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402, N813

from medasl.ops import io, report  # noqa: E402
from medasl.runtime import outputs  # noqa: E402
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Measured, Volume  # noqa: E402
from tests.test_cli import run_text  # noqa: E402

PIPELINE = """import std.io
pipeline p {
  cases = phantom(cases=2, size=(16, 16, 8), seed=5)
  written = write_nifti(cases.image, "ct/*.nii.gz")
}
"""


def _run(tmp_path: Path, *args: str) -> tuple[int, str]:
    return run_text(tmp_path, PIPELINE, "--workers", "1", *args)


def _written(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "out" / "p" / "ct"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _computed(tmp_path: Path) -> list[str]:
    logs = sorted((tmp_path / "out" / "p" / "logs").glob("run-*.jsonl"))
    events = [json.loads(line) for line in logs[-1].read_text().splitlines()]
    return [e["step"] for e in events if e["event"] == "computed"]


class _FullDiskSitk:
    """SimpleITK, except that WriteImage behaves as its NIfTI writer does on a full disk:
    it leaves an empty file and reports nothing."""

    def __getattr__(self, name: str) -> object:
        return getattr(sitk, name)

    @staticmethod
    def WriteImage(image: sitk.Image, path: str, useCompression: bool = False) -> None:  # noqa: N802, N803
        Path(path).write_bytes(b"")


def _image() -> Volume:
    return Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                  (1, 0, 0, 0, 1, 0, 0, 0, 1), "image", "CT")


def test_a_full_disk_leaves_no_file_and_the_next_run_writes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(io, "sitk", _FullDiskSitk())
        patched.setattr(outputs, "_free_bytes", lambda folder: 0)
        code, err = _run(tmp_path)
    assert code == 1, err
    assert "error[E2010]" in err and "the disk is full" in err and "nothing finished is lost" in err
    assert "Traceback" not in err
    assert _written(tmp_path) == []  # neither an empty file nor a temporary one
    code, err = _run(tmp_path)
    assert code == 0, err
    assert _computed(tmp_path) == ["written", "written"]
    files = _written(tmp_path)
    assert [p.name for p in files] == ["case000.nii.gz", "case001.nii.gz"]
    assert all(sitk.ReadImage(str(p)).GetSize() == (16, 16, 8) for p in files)


def test_an_enospc_raised_while_writing_is_e2010(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS's error, where Python (or a library that reports it) sees it: at the write
    or at the fsync before the rename."""

    def no_space(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "fsync_file", no_space)
    for write in (lambda: io.write_nifti(_image(), tmp_path / "a.nii.gz"),
                  lambda: report.html(tmp_path / "r.html", metrics=[Measured("auc", "max", 0.9)])):
        with pytest.raises(DataError) as caught:
            write()
        assert caught.value.code == "E2010" and "nothing finished is lost" in (caught.value.help or "")
    assert list(tmp_path.iterdir()) == []


def test_a_short_nifti_from_the_library_is_never_put_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SimpleITK's NIfTI writer truncates without an error on a full disk: the header and
    the gzip trailer show it."""
    real = sitk.WriteImage

    def cut_short(image: sitk.Image, path: str, useCompression: bool = False) -> None:  # noqa: N803
        real(image, path, useCompression)
        Path(path).write_bytes(Path(path).read_bytes()[:-20])

    monkeypatch.setattr(io, "sitk", _FullDiskSitk())
    monkeypatch.setattr(_FullDiskSitk, "WriteImage", staticmethod(cut_short))
    monkeypatch.setattr(outputs, "_free_bytes", lambda folder: 0)
    for name in ("a.nii.gz", "b.nii"):
        with pytest.raises(DataError) as caught:
            io.write_nifti(_image(), tmp_path / name)
        assert caught.value.code == "E2010"
    monkeypatch.setattr(outputs, "_free_bytes", lambda folder: 10 << 30)  # plenty of room: another failure
    with pytest.raises(DataError) as caught:
        io.write_nifti(_image(), tmp_path / "c.nii.gz")
    assert caught.value.code == "E2013"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["empty", "same size, other bytes"])
def test_a_damaged_output_is_written_again(tmp_path: Path, damage: str) -> None:
    """The writer's entry records each file's size and sha256: an output emptied (as an
    earlier full disk left them) or changed in place is not taken for a finished one."""
    assert _run(tmp_path)[0] == 0
    victim = _written(tmp_path)[0]
    good = victim.read_bytes()
    victim.write_bytes(b"" if damage == "empty" else good[:-1] + bytes([good[-1] ^ 0xFF]))
    code, err = _run(tmp_path)
    assert code == 0, err
    assert _computed(tmp_path) == ["written"]
    assert victim.read_bytes() == good
    assert _run(tmp_path)[0] == 0 and _computed(tmp_path) == []  # intact now: cached


def test_an_entry_that_recorded_sizes_only_is_written_again(tmp_path: Path) -> None:
    """Entries of the earlier format recorded sizes only, so a 0-byte file a full disk
    left counted as written; such an entry is not trusted."""
    assert not outputs.files_intact({"info": {"files": {str(tmp_path / "a.nii.gz"): 0}}})
    (tmp_path / "a.nii.gz").write_bytes(b"")
    assert not outputs.files_intact({"info": {"files": {str(tmp_path / "a.nii.gz"): 0}}})
    record = outputs.written_record([tmp_path / "a.nii.gz"])
    assert outputs.files_intact({"info": {"files": record}})


def test_a_folder_where_the_file_goes_is_e2013(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "a.nii.gz").mkdir()  # a folder where the file should go
    with pytest.raises(DataError) as caught:
        io.write_nifti(_image(), tmp_path / "taken" / "a.nii.gz")
    assert caught.value.code == "E2013"
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["a.nii.gz"]


def test_a_two_file_format_commits_both_files(tmp_path: Path) -> None:
    written = io.write_mha(_image(), tmp_path / "x.mhd")
    assert [p.name for p in written] == ["x.mhd", "x.zraw"]
    assert np.array_equal(io.mha(path=written[0]).array, _image().array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mhd", "x.zraw"]


def test_a_library_that_reports_the_full_disk_gives_e2010(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SimpleITK's NRRD and MetaImage writers do report it, as a RuntimeError naming the
    OS's reason, after leaving part of the file."""

    def reports(image: sitk.Image, path: str, useCompression: bool = False) -> None:  # noqa: N803
        Path(path).write_bytes(b"NRRD0004\n")
        raise RuntimeError(f"ITK ERROR: NrrdImageIO: Write: Error writing {path}: No space left on device")

    monkeypatch.setattr(io, "sitk", _FullDiskSitk())
    monkeypatch.setattr(_FullDiskSitk, "WriteImage", staticmethod(reports))
    with pytest.raises(DataError) as caught:
        io.write_nrrd(_image(), tmp_path / "a.nrrd")
    assert caught.value.code == "E2010"
    assert list(tmp_path.iterdir()) == []
