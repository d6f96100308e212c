import hashlib
import zipfile
from pathlib import Path

import pytest

from pitscope.data.download import BSDATA_ARCHIVE, download, fetch_bsdata, mvtec_instructions, safe_extract


@pytest.fixture
def archive(tmp_path) -> Path:
    """A small zip shaped like GitHub's BSData archive (one top-level folder)."""
    path = tmp_path / "served" / "BSData-abc.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("BSData-abc/data/a.jpg", b"not really a jpeg")
        zf.writestr("BSData-abc/label/a.json", b"{}")
        zf.writestr("BSData-abc/README.md", b"hello" * 1000)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_accepts_the_right_checksum(archive, tmp_path):
    dest = download(archive.as_uri(), tmp_path / "dl" / "x.zip", sha256=_sha(archive).upper(), progress=False)
    assert dest.read_bytes() == archive.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["x.zip"]


def test_download_rejects_a_wrong_checksum_and_leaves_nothing(archive, tmp_path):
    dest = tmp_path / "dl" / "x.zip"
    with pytest.raises(ValueError) as info:
        download(archive.as_uri(), dest, sha256="0" * 64, progress=False)
    assert "0" * 64 in str(info.value) and _sha(archive) in str(info.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_download_without_checksum_and_reuse_of_a_complete_file(archive, tmp_path):
    dest = download(archive.as_uri(), tmp_path / "x.zip", sha256=None, progress=False)
    assert _sha(dest) == _sha(archive)
    archive.unlink()  # a second call must not need the source
    assert download("file:///nonexistent.zip", dest, sha256=_sha(dest), progress=False) == dest


def test_fetch_bsdata_extracts_and_returns_the_root(archive, tmp_path):
    root = fetch_bsdata(tmp_path / "datasets", url=archive.as_uri(), sha256=_sha(archive), progress=False)
    assert root == tmp_path / "datasets" / "BSData-abc"
    assert (root / "data" / "a.jpg").is_file() and (root / "label" / "a.json").is_file()


def test_safe_extract_refuses_members_escaping_the_folder(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr("../escaped.txt", b"bad")
    with pytest.raises(ValueError, match="escaped.txt"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "fine.txt").exists()


def test_archive_is_pinned_and_mvtec_is_not_scripted():
    assert "7204b28a621733c01cd75899ed9ea27f6ea0b9e3" in BSDATA_ARCHIVE["url"]
    text = mvtec_instructions()
    assert "licence" in text and "mvtec.com" in text


def test_download_command_uses_a_local_url(archive, tmp_path, capsys):
    from pitscope.cli import main

    dest = tmp_path / "datasets"
    assert main(["download", "bsdata", str(dest), "--url", archive.as_uri(), "--sha256", _sha(archive)]) == 0
    assert (dest / "BSData-abc" / "data" / "a.jpg").is_file()
    assert "data.root" in capsys.readouterr().out
    assert main(["download", "bsdata", str(tmp_path / "other"), "--url", archive.as_uri(), "--sha256", "0" * 64]) == 2
    assert "sha" in capsys.readouterr().err.lower()
    assert main(["download", "mvtec"]) == 0
    assert "licence" in capsys.readouterr().out
