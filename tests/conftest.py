"""Shared test helpers. Golden files are rewritten with MEDASL_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPDATE_GOLDEN = os.environ.get("MEDASL_UPDATE_GOLDEN") == "1"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(module: bool = False) -> Path:
    """The real sample images; they live beside the checkout, never inside it. Without
    them the test (or, with `module`, the whole test file) is skipped."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared sample data is not at {SHARED_DATA} (it lives beside the checkout, "
                    "never inside it)", allow_module_level=module)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """File names in diagnostics and imports are relative to the repository root."""
    monkeypatch.chdir(ROOT)


def compare_golden(actual: str, expected_path: Path) -> None:
    """Assert `actual` equals the golden file, or rewrite it when updating."""
    if UPDATE_GOLDEN or not expected_path.exists():
        if not UPDATE_GOLDEN:
            pytest.fail(f"{expected_path} is missing; run with MEDASL_UPDATE_GOLDEN=1 and review it")
        expected_path.write_text(actual, encoding="utf-8")
        return
    expected = expected_path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from {expected_path.relative_to(ROOT)}"


def write_nifti_file(path: Path, array: object, spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
                     origin: tuple[float, ...] = (0.0, 0.0, 0.0)) -> Path:
    """Write `array` ((z, y, x) NumPy order) as a NIfTI file with SimpleITK, for tests."""
    import SimpleITK as sitk  # noqa: N813 (imported here: the front-end tests run without it)

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path
