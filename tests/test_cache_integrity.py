"""The cache's integrity (issue 10): a cache entry damaged after it was stored is never
used. A run computes it again, says so (W0015, naming the step and the case), exits 0
and writes what a clean run writes. A full or read-only cache is a coded error (E2021,
E2020), exit 1, and leaves nothing a later run would trust. `medasc cache verify` checks
every entry and drops the damaged ones on request.

The runs are `medasc run` in this process (`--workers 1`) on the real abdominal CT of the
shared data, resampled to 4 mm (a few hundred milliseconds each).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402, N813

from medasl.runtime import cache as cache_module  # noqa: E402
from medasl.runtime import store  # noqa: E402
from medasl.runtime.cache import MANIFEST_NAME, Cache, CacheKey  # noqa: E402
from medasl.runtime.store import load_value, save_value  # noqa: E402
from medasl.runtime.values import Volume  # noqa: E402
from tests.conftest import shared_data  # noqa: E402
from tests.test_cli import run as cli  # noqa: E402

CASE = "example"  # the `*` of `*_ct_sm.nii.gz`


def pipeline_text() -> str:
    root = shared_data() / "ct_abdomen_totalsegmentator"
    return f"""import std.io, std.pre
pipeline p {{
  cts = images("{root}", "*_ct_sm.nii.gz") as Dataset<Image[3, CT]>
  smooth = cts |> resample(spacing=(4.0, 4.0, 4.0) mm) |> window(level=40, width=400)
  saved = write_nifti(smooth, "smooth/*.nii.gz")
  again = write_nifti(smooth, "again/*.nii.gz")
}}
"""  # two users of `smooth`, so that its result is stored (one user computes it in memory)


def medasc_run(folder: Path, *extra: str) -> tuple[int, str]:
    code, out, err = cli("run", str(folder / "p.medas"), "--cache-dir", str(folder / "cache"), "--out",
                         str(folder / "out"), "--workers", "1", *extra)
    return code, out + err


def written(folder: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(folder / "out" / "p" / "smooth" / f"{CASE}.nii.gz"))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def entries(folder: Path) -> dict[str, Path]:
    """node id (`p/step#case`) -> entry folder, read from the manifests."""
    found = {}
    for path in (folder / "cache" / "results").glob("??/*"):
        manifest = json.loads((path / MANIFEST_NAME).read_text())
        found[manifest["node_id"]] = path
    return found


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the pipeline, a filled cache and the outputs of one clean run."""
    folder = tmp_path_factory.mktemp("clean")
    (folder / "p.medas").write_text(pipeline_text())
    code, text = medasc_run(folder)
    assert code == 0, text
    return folder


@pytest.fixture
def copy(clean: Path, tmp_path: Path) -> Path:
    """The clean run's folder, copied, so that each test damages its own cache."""
    shutil.copytree(clean, tmp_path / "run")
    return tmp_path / "run"


# ----- damaged entries are computed again ------------------------------------------------


def flip_bytes(entry: Path) -> None:
    with open(entry / "value.bin", "r+b") as f:
        f.seek(os.path.getsize(entry / "value.bin") // 2)
        data = f.read(16)
        f.seek(-len(data), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in data))


def zeros_of_the_same_size(entry: Path) -> None:
    (entry / "value.bin").write_bytes(bytes(os.path.getsize(entry / "value.bin")))


def edit_spacing(entry: Path) -> None:
    """The stored value's spacing, edited in the manifest that holds the value's JSON."""
    text = (entry / MANIFEST_NAME).read_text()
    edited = text.replace('"spacing":[4.0,4.0,4.0]', '"spacing":[4.0,4.0,5.0]', 1)
    assert edited != text
    (entry / MANIFEST_NAME).write_text(edited)


def folder_replaced_by_a_file(entry: Path) -> None:
    shutil.rmtree(entry)
    entry.write_text("not an entry")


DAMAGES = {"flipped bytes": flip_bytes, "zeros": zeros_of_the_same_size, "spacing": edit_spacing,
           "folder is a file": folder_replaced_by_a_file}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_entry_is_computed_again_with_a_warning(damage: str, clean: Path, copy: Path) -> None:
    expected_array, expected_spacing = written(clean)
    smooth = entries(copy)[f"p/smooth#{CASE}"]
    DAMAGES[damage](smooth)
    shutil.rmtree(copy / "out" / "p" / "smooth")  # so the writer writes again, from what the run uses

    code, text = medasc_run(copy)

    assert code == 0, text
    array, spacing = written(copy)
    assert spacing == expected_spacing and np.array_equal(array, expected_array)
    assert "warning[W0015]" in text and "`smooth`" in text and f"case {CASE}" in text, text
    assert "computed again" in text
    assert Cache(copy / "cache" / "results").lookup(smooth.name, verify=True) is not None  # a sound entry again
    log = (copy / "out" / "p" / "logs")
    records = [json.loads(line) for path in log.glob("run-*.jsonl") for line in path.read_text().splitlines()]
    assert any(r["event"] == "damaged" and r["case"] == CASE and r["entry"] == smooth.name for r in records)


def test_a_dry_run_says_the_result_is_damaged_and_changes_nothing(copy: Path) -> None:
    smooth = entries(copy)[f"p/smooth#{CASE}"]
    flip_bytes(smooth)
    before = (smooth / "value.bin").read_bytes()
    code, text = medasc_run(copy, "--dry-run")
    assert code == 0, text
    assert "the earlier result is damaged: value.bin holds other bytes than were stored" in " ".join(text.split())
    assert (smooth / "value.bin").read_bytes() == before


def test_each_file_is_hashed_once_per_process(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fully cached run looks each result up more than once (the executor, the reader of
    the next step, the report); each stored file is read for its digest once."""
    cache = Cache(copy / "cache" / "results")
    smooth = entries(copy)[f"p/smooth#{CASE}"]
    hashed: list[str] = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda path: hashed.append(str(path)) or real(path))
    monkeypatch.setattr(cache_module, "_CHECKED", cache_module._CheckedFiles())  # a new process
    for _ in range(3):
        assert cache.lookup(smooth.name) is not None
    assert hashed == [str(smooth / "value.bin")]
    zeros_of_the_same_size(smooth)  # a change is seen by the next lookup, however soon
    assert cache.lookup(smooth.name) is None and len(hashed) == 2


def test_a_value_json_edited_is_found(tmp_path: Path) -> None:
    """Values stored with `save_value` (training checkpoints) keep their JSON in value.json:
    an edit there is damage too."""
    cache = Cache(tmp_path)
    key = CacheKey("train.checkpoint", 1, {"epoch": 1})
    volume = Volume(np.arange(64 * 64 * 8, dtype=np.float32).reshape(8, 64, 64), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with cache.write(key, node_id="p/train") as pending:
        pending.digests.update(save_value({"volume": volume}, pending.path))
    entry = cache.lookup(key)
    assert entry is not None and load_value(entry.path)["volume"].spacing == (1.0, 1.0, 2.5)  # type: ignore[index]
    text = (entry.path / "value.json").read_text()
    (entry.path / "value.json").write_text(text.replace("2.5", "3.5"))
    found: list[object] = []
    cache.on_damage = found.append
    assert Cache(tmp_path).lookup(key) is None and cache.lookup(key) is None
    assert [d.problem for d in found] == ["value.json holds other bytes than were stored"]  # type: ignore[attr-defined]
    assert cache.damaged[key.digest()].node_id == "p/train"


def test_an_older_entry_whose_value_cannot_be_verified_is_computed_again(tmp_path: Path) -> None:
    """Manifest format 2 kept small values in the manifest with no digest of them: such an
    entry is computed again (once); the run is not warned, nothing is damaged."""
    cache = Cache(tmp_path)
    key = CacheKey("window", 1, {"level": 40})
    with cache.write(key) as pending:
        pending.value = {"format": 2, "value": 1.5}
    path = cache.entry_path(key) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    del manifest["check"]
    manifest["format"] = 2
    path.write_text(json.dumps(manifest))
    warned: list[object] = []
    cache.on_damage = warned.append
    assert cache.lookup(key) is None and warned == [] and cache.damaged[key.digest()].outdated
    entry, computed = cache.ensure(key, lambda p: setattr(p, "value", {"format": 2, "value": 1.5}))
    assert computed and entry.manifest["format"] == cache_module.MANIFEST_FORMAT
    assert Cache(tmp_path).lookup(key) is not None


# ----- a full or read-only cache ------------------------------------------------------------


def refuse_writes(monkeypatch: pytest.MonkeyPatch, code: int, after_bytes: int = 0) -> None:
    """Writes of the cache's value files fail with `code` after `after_bytes` bytes, as a
    full disk (ENOSPC) fails them part of the way."""
    real_open = open

    class Refusing:
        def __init__(self, file: object) -> None:
            self.file, self.written = file, 0

        def write(self, data: bytes) -> int:
            raw = memoryview(data).cast("B")  # arrays are written as memoryviews of their bytes
            room = max(after_bytes - self.written, 0)
            if raw.nbytes > room:
                self.file.write(raw[:room])  # type: ignore[attr-defined]
                raise OSError(code, os.strerror(code))
            self.written += raw.nbytes
            return self.file.write(data)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.file, name)

        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()  # type: ignore[attr-defined]

    def refusing_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        file = real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]
        return Refusing(file) if "w" in mode else file

    monkeypatch.setattr(store, "open", refusing_open, raising=False)


def assert_nothing_half_written(folder: Path) -> None:
    root = folder / "cache" / "results"
    assert not [p for p in root.rglob(".tmp-*")], "a temp dir was left"
    for path in root.glob("??/*"):
        assert Cache(root).lookup(path.name, verify=True) is not None, f"a damaged entry {path.name} was committed"


def test_a_full_cache_is_e2021_and_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               clean: Path) -> None:
    (tmp_path / "p.medas").write_text(pipeline_text())
    refuse_writes(monkeypatch, errno.ENOSPC, after_bytes=4096)
    code, text = medasc_run(tmp_path)
    assert code == 1, text
    assert "error[E2021]" in text and "no space left for the cache" in text and "cache gc" in text, text
    assert "Traceback" not in text
    assert_nothing_half_written(tmp_path)

    monkeypatch.undo()  # space again: the same command finishes, with a clean run's output
    code, text = medasc_run(tmp_path)
    assert code == 0 and "W0015" not in text, text
    array, spacing = written(tmp_path)
    expected_array, expected_spacing = written(clean)
    assert spacing == expected_spacing and np.array_equal(array, expected_array)


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` act as on a read-only file system (simulated: tests may run as root,
    whom permissions do not stop): every call that would change it fails with EROFS."""
    inside = str(folder)

    def refuse(real: object, *paths: int) -> object:
        def call(*args: object, **kwargs: object) -> object:
            if any(str(args[i]).startswith(inside) for i in paths if i < len(args)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[paths[0]]))
            return real(*args, **kwargs)  # type: ignore[operator]
        return call

    real_open = os.open

    def open_for_reading(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_for_reading)
    for name, paths in (("mkdir", (0,)), ("rename", (0, 1)), ("replace", (0, 1)), ("unlink", (0,)),
                        ("rmdir", (0,)), ("utime", (0,))):
        monkeypatch.setattr(os, name, refuse(getattr(os, name), *paths))


def test_a_read_only_cache_is_e2020(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p.medas").write_text(pipeline_text())
    read_only(monkeypatch, tmp_path / "cache")
    code, text = medasc_run(tmp_path)
    assert code == 1, text
    assert "error[E2020]" in text and "cannot write into the cache" in text and "--cache-dir" in text, text
    assert "Traceback" not in text


def test_a_read_only_cache_serves_a_cached_run(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to compute needs no write: the index the run would append to is skipped.
    (The clean run's own folder: its writers' keys name its --out.)"""
    before = sorted(p.name for p in (clean / "cache" / "results").glob("??/*"))
    read_only(monkeypatch, clean / "cache")
    code, text = medasc_run(clean)
    assert code == 0 and " new " not in text and "cached" in text, text
    code, text = medasc_run(clean, "--force", "smooth")  # --force must remove a result: it cannot
    assert code == 1 and "error[E2020]" in text and "Traceback" not in text, text
    monkeypatch.undo()
    assert sorted(p.name for p in (clean / "cache" / "results").glob("??/*")) == before


def test_a_read_only_out_folder_is_a_diagnostic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run log is the first file written under --out, before any writer runs."""
    (tmp_path / "p.medas").write_text(pipeline_text())
    read_only(monkeypatch, tmp_path / "out")
    code, text = medasc_run(tmp_path)
    assert code == 1, text
    assert "error[E2013]" in text and "Read-only file system" in text and "--out" in text, text
    assert "Traceback" not in text


# ----- medasc cache verify -----------------------------------------------------------------


def test_cache_verify_reports_and_drops_damaged_entries(copy: Path) -> None:
    found = entries(copy)
    flip_bytes(found[f"p/smooth#{CASE}"])
    folder_replaced_by_a_file(found[f"p/cts#{CASE}"] if f"p/cts#{CASE}" in found else found[f"p/saved#{CASE}"])
    cache_dir = str(copy / "cache")

    code, out, err = cli("cache", "--cache-dir", cache_dir, "verify")
    assert code == 1, out + err
    assert "damaged" in out and f"p/smooth#{CASE}: value.bin holds other bytes than were stored" in out, out
    assert "its folder was replaced by a file" in out and f"{len(found) - 2} sound, 2 damaged" in out, out

    code, out, err = cli("cache", "--cache-dir", cache_dir, "verify", "--drop")
    assert code == 0 and "dropped 2" in out, out + err
    code, out, err = cli("cache", "--cache-dir", cache_dir, "verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["bad"] == [] and report["sound"] == len(found) - 2
