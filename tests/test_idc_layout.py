"""Scanning and decoding the public IDC layout, without the service."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from app.packed import open_patches, read_index, read_meta
from app.uploads import zip_problems
from tests.helpers import png_bytes, write_patch, zip_bytes
from worker.idc_layout import LayoutError, find_root, safe_extract, scan
from worker.ingest import ingest_folder


def make_messy_folder(root):
    good = [write_patch(root, "100", 0, 1, 1), write_patch(root, "100", 1, 51, 1), write_patch(root, "200", 0, 1, 51)]
    write_patch(root, "200", 1, 9, 9, data=png_bytes(w=50, h=20, seed=3))  # an edge patch, kept and padded
    write_patch(root, "100", 0, 2, 2, data=b"\x89PNG\r\n\x1a\nthis is not really a png")  # corrupt
    write_patch(root, "100", 0, 3, 3, data=png_bytes()[:40])  # truncated
    write_patch(root, "100", 0, 0, 0, name="hello.png")  # misnamed
    write_patch(root, "100", 0, 4, 4, name="100_idx5_x4_y4_class1.png")  # label disagrees with folder
    write_patch(root, "100", 1, 5, 5, name="999_idx5_x5_y5_class1.png")  # patient disagrees
    (root / "100" / "2").mkdir()  # not a label folder
    (root / "200" / "0" / "notes.txt").write_text("hi")
    os.symlink(good[0], root / "200" / "0" / "200_idx5_x7_y7_class0.png")  # symlinks refused
    return good


def test_scan_lists_bad_files_with_reasons(tmp_path):
    make_messy_folder(tmp_path)
    good, bad = scan(tmp_path)
    assert [(c.patient, c.label, c.x, c.y) for c in good] == [
        ("100", 0, 1, 1), ("100", 0, 2, 2), ("100", 0, 3, 3), ("100", 1, 51, 1), ("200", 0, 1, 51), ("200", 1, 9, 9)]
    reasons = {b["file"]: b["reason"] for b in bad}
    assert "name is not" in reasons["100/0/hello.png"]
    assert "label folder says 0" in reasons["100/0/100_idx5_x4_y4_class1.png"]
    assert "folder says 100" in reasons["100/1/999_idx5_x5_y5_class1.png"]
    assert "label folder" in reasons["100/2"]
    assert "symbolic link" in reasons["200/0/200_idx5_x7_y7_class0.png"]
    assert "name is not" in reasons["200/0/notes.txt"]


def test_ingest_folder_keeps_good_and_edge_patches(tmp_path):
    src = tmp_path / "src"
    make_messy_folder(src)
    meta, bad = ingest_folder(src, tmp_path / "out", workers=2)
    unreadable = sorted(b["file"] for b in bad if b["reason"].startswith("unreadable"))
    assert unreadable == ["100/0/100_idx5_x2_y2_class0.png", "100/0/100_idx5_x3_y3_class0.png"]
    assert meta["n"] == 4 and meta["n_edge_patches"] == 1
    assert meta["by_label"] == {"0": 2, "1": 2} and meta["n_patients"] == 2
    patches, index = open_patches(tmp_path / "out"), read_index(tmp_path / "out")
    assert patches.shape == (4, 50, 50, 3) and patches.dtype == np.uint8
    edge = index[(index["patient"] == "200") & (index["label"] == 1)][0]
    assert (edge["orig_h"], edge["orig_w"]) == (20, 50)
    edge_pixels = patches[int(np.flatnonzero((index["patient"] == "200") & (index["label"] == 1))[0])]
    assert (edge_pixels[20:] == 255).all() and not (edge_pixels[:20] == 255).all()
    assert read_meta(tmp_path / "out")["edge_policy"].startswith("padded")


def test_find_root_one_level_up(tmp_path):
    write_patch(tmp_path / "IDC_regular_ps50_idx5", "100", 0, 1, 1)
    assert find_root(tmp_path) == tmp_path / "IDC_regular_ps50_idx5"
    with pytest.raises(LayoutError):
        find_root(tmp_path / "IDC_regular_ps50_idx5" / "100" / "0")


def test_zip_traversal_and_symlinks_refused(tmp_path):
    ok = tmp_path / "ok.zip"
    ok.write_bytes(zip_bytes({"d/100/0/100_idx5_x1_y1_class0.png": png_bytes()}))
    safe_extract(ok, tmp_path / "ok")
    assert (tmp_path / "ok/d/100/0/100_idx5_x1_y1_class0.png").is_file()
    for name, blob in {
        "dotdot": zip_bytes({"../evil.png": b"x"}),
        "nested": zip_bytes({"a/../../evil.png": b"x"}),
        "absolute": zip_bytes({"/tmp/evil.png": b"x"}),
        "link": zip_bytes({}, symlinks={"a/link.png": "/etc/passwd"}),
    }.items():
        path = tmp_path / f"{name}.zip"
        path.write_bytes(blob)
        with zipfile.ZipFile(path) as zf:
            assert zip_problems(zf), name
        with pytest.raises(LayoutError):
            safe_extract(path, tmp_path / name)
        assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
