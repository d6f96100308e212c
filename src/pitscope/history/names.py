"""Part ids and capture times of photos: from a regular expression on the file name, or EXIF.

BSData's names carry both, `01_<yymmddhhmmss>_<position>_crop_<n>.jpg`:
    --part-from '^\\d+_\\d{12}_(\\d+_\\d+)_'    ->  part 277500_315
    --time-from '^\\d+_(\\d{12})_'             ->  captured 2020-08-28 11:00:14
(`BSDATA_PART`, `BSDATA_TIME`). A pattern's named group `part` / `time`, else its first group,
else the whole match, is taken. A time is read as yymmddhhmmss (12 digits), yyyymmddhhmmss (14
digits) or ISO 8601; one without a zone is taken as UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from PIL import Image

BSDATA_PART = r"^\d+_\d{12}_(\d+_\d+)_"
BSDATA_TIME = r"^\d+_(\d{12})_"
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_DATETIME = 0x0132
EXIF_IFD = 0x8769


def compile_pattern(pattern: str | None, what: str) -> re.Pattern | None:
    """`pattern` compiled, or ValueError naming `what` (e.g. "--part-from") and the regex error."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what}: {pattern!r} is not a valid regular expression ({exc})") from None


def _group(match: re.Match, name: str) -> str:
    if name in match.re.groupindex:
        return match.group(name)
    return match.group(1) if match.re.groups else match.group(0)


def part_from_name(name: str | Path, pattern: re.Pattern | None) -> str | None:
    """The part id `pattern` finds in the file name of `name` (None: no pattern, or no match)."""
    if pattern is None:
        return None
    match = pattern.search(Path(name).name)
    return _group(match, "part") if match else None


def parse_time(text: str) -> dt.datetime:
    """An aware UTC datetime from yymmddhhmmss, yyyymmddhhmmss or ISO 8601 text (ValueError if none)."""
    text = text.strip()
    formats = {12: "%y%m%d%H%M%S", 14: "%Y%m%d%H%M%S"}
    try:
        if text.isdigit() and len(text) in formats:
            value = dt.datetime.strptime(text, formats[len(text)])
        else:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2020-08-28T11:00:14Z), yymmddhhmmss or yyyymmddhhmmss"
        ) from None
    return as_utc(value)


def as_utc(value: dt.datetime) -> dt.datetime:
    """`value` in UTC; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def time_from_name(name: str | Path, pattern: re.Pattern | None) -> dt.datetime | None:
    """The capture time `pattern` finds in the file name (None: no pattern or no match;
    ValueError when the matched text is no time)."""
    if pattern is None:
        return None
    match = pattern.search(Path(name).name)
    if match is None:
        return None
    try:
        return parse_time(_group(match, "time"))
    except ValueError as exc:
        raise ValueError(f"{Path(name).name}: {exc}") from None


def exif_time(image: Image.Image) -> dt.datetime | None:
    """DateTimeOriginal (else DateTime) of an opened image's EXIF, as UTC; None when absent or unreadable."""
    try:
        exif = image.getexif()
        text = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
        if not text:
            return None
        return as_utc(dt.datetime.strptime(str(text).strip("\x00 "), "%Y:%m:%d %H:%M:%S"))
    except (ValueError, OSError, AttributeError, KeyError):
        return None


def exif_time_of_file(path: str | Path) -> dt.datetime | None:
    """`exif_time` of the image file at `path` (None when it cannot be opened)."""
    try:
        with Image.open(path) as image:
            return exif_time(image)
    except OSError:
        return None
