"""Fetch the public datasets: a checksummed, atomic download and a safe zip extraction.

BSData is published under CC BY-SA 4.0 on GitHub and is fetched here from a pinned commit.
MVTec AD is not: its licence asks every user to accept its terms on the MVTec site first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import TypedDict

from tqdm import tqdm

logger = logging.getLogger(__name__)


class Archive(TypedDict):
    """Where a dataset archive is downloaded from, and its SHA-256 when its bytes are stable."""

    url: str
    sha256: str | None


BSDATA_ARCHIVE: Archive = dict(
    url="https://github.com/2Obe/BSData/archive/7204b28a621733c01cd75899ed9ea27f6ea0b9e3.zip",
    sha256=None,  # GitHub builds archives on demand; their bytes are not guaranteed stable
)
_CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Download `url` to `dest` and return `dest`.

    The bytes go to a temporary file beside `dest`, which replaces `dest` only once the
    SHA-256 matches `sha256` (any check is skipped when it is None; the actual digest is
    logged so it can be pinned). A mismatch is a ValueError naming both digests, and leaves
    neither the temporary file nor `dest` behind. An existing `dest` whose digest matches (or
    any existing `dest` when sha256 is None) is returned without downloading: a `dest` only
    ever appears complete. Any URL urllib opens works, `file://` included.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length else None, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ValueError(f"{url}: checksum mismatch: expected sha256 {sha256.lower()}, got {actual}")
        logger.info("downloaded %s to %s (sha256 %s)", url, dest, actual)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def safe_extract(archive: str | Path, dest_dir: str | Path) -> list[str]:
    """Extract a zip into `dest_dir`, refusing it whole if any member would land outside.

    A member whose resolved path escapes `dest_dir` (an absolute name, `..` components)
    raises ValueError naming it before anything is written. Returns the member names.
    """
    dest_dir = Path(dest_dir).resolve()
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        for name in names:
            target = (dest_dir / name).resolve()
            if not target.is_relative_to(dest_dir):
                raise ValueError(f"{archive}: member {name!r} would be written outside {dest_dir}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        zf.extractall(dest_dir)
    return names


def fetch_bsdata(
    dest_dir: str | Path,
    url: str = BSDATA_ARCHIVE["url"],
    sha256: str | None = BSDATA_ARCHIVE["sha256"],
    progress: bool = True,
) -> Path:
    """Download the BSData archive into `dest_dir`, extract it there, and return the dataset root.

    The root is the archive's single top-level folder (GitHub names it `BSData-<commit>`), the
    one holding `data/` and `label/`; point data.root or $PITSCOPE_BSDATA at it. The zip is
    kept beside it so a second call does not download again.
    """
    dest_dir = Path(dest_dir)
    archive = download(url, dest_dir / Path(urllib.parse.urlparse(url).path).name, sha256=sha256, progress=progress)
    tops = sorted({name.split("/", 1)[0] for name in safe_extract(archive, dest_dir)})
    if len(tops) == 1 and (dest_dir / tops[0]).is_dir():
        return dest_dir / tops[0]
    return dest_dir


def mvtec_instructions() -> str:
    """How to obtain MVTec AD, which is not downloaded by script because of its licence."""
    return (
        "MVTec AD is not downloaded automatically: its licence (CC BY-NC-SA 4.0) asks every user to\n"
        "accept the terms on https://www.mvtec.com/company/research/datasets/mvtec-ad before\n"
        "downloading. Download and unpack it there, then use it with\n"
        "  data.format=mvtec data.root=<folder holding the categories> data.category=<e.g. bottle>\n"
    )
