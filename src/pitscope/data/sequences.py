"""BSData's monitored positions: 15 spindle positions photographed over 19 days.

`image_data.json` gives each image a list `wear_dev` of the wear-development sequences it
belongs to; a sequence is named after one of its own photographs (`01_<time>_<position>_crop`,
whose file is `<name>_1.jpg`). There are 27 such names, each listing 69 images; 12 positions
carry two names that list the very same 69 images and 3 positions carry one, so the 27 names
make 15 distinct sequences, which together hold the 1035 type-2 images, each exactly once (the
69 type-1 photographs, KGT*, are in none). `read_sequences` merges names that list the same
images into one `WearSequence` and keeps every name: counting both names would weigh a position
twice, and a split over names would put the same images on both of its sides. Two sequences
that share some images but not all are refused. Within a sequence the images are ordered by the
capture time in their file names, `01_<yymmddhhmmss>_...` (ties by name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from pitscope.data.bsdata import bsdata_root, position_files, read_polygons
from pitscope.data.dataset import Record

SECONDS_PER_DAY = 86_400.0
_TIME = re.compile(r"^\d+_(\d{12})_")


def capture_time(name: str | Path) -> datetime:
    """The capture time in a BSData file name `<nn>_<yymmddhhmmss>_...` (e.g. 01_200907232354_...).

    Raises ValueError naming the file when the name carries no such time or an impossible one.
    """
    stem = Path(name).name
    match = _TIME.match(stem)
    if match is None:
        raise ValueError(f"{name}: no capture time in the file name (expected 01_<yymmddhhmmss>_...)")
    try:
        return datetime.strptime(match.group(1), "%y%m%d%H%M%S")
    except ValueError as exc:
        raise ValueError(f"{name}: {match.group(1)} is not a valid yymmddhhmmss time: {exc}") from exc


@dataclass(frozen=True)
class WearSequence:
    """One spindle position photographed over time.

    name:    the first of `names` (sorted); names: every `wear_dev` name listing these images.
    records: the images in capture order; label 1 with its polygons when label/<stem>.json exists.
    times:   the capture time of each record, from its file name.
    """

    name: str
    names: tuple[str, ...]
    records: tuple[Record, ...]
    times: tuple[datetime, ...]

    @property
    def days(self) -> np.ndarray:
        """(N,) float64 days since the sequence's first image."""
        return np.array([(t - self.times[0]).total_seconds() / SECONDS_PER_DAY for t in self.times])


def read_sequences(root: str | Path | None = None) -> list[WearSequence]:
    """BSData's distinct wear-development sequences, sorted by name (see the module docstring).

    root: the BSData folder (`bsdata_root(root)` finds it). Raises FileNotFoundError without
    image_data.json, DatasetLayoutError for a listed image missing from data/ or for two
    sequences sharing only some of their images, ValueError for a name without a capture time.
    """
    root = bsdata_root(root)
    sequences = []
    for names, files in position_files(root).items():
        ordered = sorted(files, key=lambda f: (capture_time(f), f))
        records = []
        for file in ordered:
            label = root / "label" / f"{Path(file).stem}.json"
            polygons = read_polygons(label) if label.is_file() else None
            records.append(Record(root / "data" / file, int(polygons is not None), polygons=polygons))
        sequences.append(WearSequence(names[0], names, tuple(records), tuple(capture_time(f) for f in ordered)))
    return sorted(sequences, key=lambda s: s.name)
