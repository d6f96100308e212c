"""Part ids and capture times from file names and EXIF."""

import datetime as dt

import pytest
from PIL import Image

from pitscope.history.names import (
    BSDATA_PART,
    BSDATA_TIME,
    EXIF_DATETIME,
    EXIF_DATETIME_ORIGINAL,
    EXIF_IFD,
    compile_pattern,
    exif_time,
    exif_time_of_file,
    parse_time,
    part_from_name,
    time_from_name,
)

UTC = dt.UTC
BSDATA_NAME = "01_200828110014_277500_315_crop_2.jpg"


def test_bsdata_names_give_the_part_and_the_capture_time():
    name = f"/data/bsdata/{BSDATA_NAME}"  # only the file name is searched
    assert part_from_name(name, compile_pattern(BSDATA_PART, "--part-from")) == "277500_315"
    assert time_from_name(name, compile_pattern(BSDATA_TIME, "--time-from")) == dt.datetime(
        2020, 8, 28, 11, 0, 14, tzinfo=UTC
    )


def test_a_named_group_wins_over_the_first_group_and_no_group_takes_the_whole_match():
    part = compile_pattern(r"(?P<line>L\d)_(?P<part>[a-z]+\d)", "--part-from")
    assert part_from_name("L2_gear7_x.png", part) == "gear7"
    when = compile_pattern(r"^(cam\d)_(?P<time>\d{14})", "--time-from")
    assert time_from_name("cam3_20210102030405.png", when) == dt.datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert part_from_name("cam3_x.png", compile_pattern(r"cam\d", "--part-from")) == "cam3"


def test_no_pattern_or_no_match_gives_none():
    assert part_from_name(BSDATA_NAME, None) is None and time_from_name(BSDATA_NAME, None) is None
    assert compile_pattern(None, "--part-from") is None
    assert part_from_name("photo.jpg", compile_pattern(BSDATA_PART, "--part-from")) is None
    assert time_from_name("photo.jpg", compile_pattern(BSDATA_TIME, "--time-from")) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2020-08-28T13:00:14+02:00", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC)),
        ("2020-08-28T06:00:14-05:00", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC)),
        ("2020-08-28T11:00:14Z", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC)),
        ("2020-08-28 11:00:14", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC)),  # no zone: UTC
        ("200828110014", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC)),
        ("20200828110014", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC)),
    ],
)
def test_times_are_read_in_utc(text, expected):
    value = parse_time(text)
    assert value == expected and value.utcoffset() == dt.timedelta(0)


def test_an_iso_time_with_a_zone_in_a_file_name_is_converted_to_utc():
    pattern = compile_pattern(r"_(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d)", "--time-from")
    when = time_from_name("cam_2020-08-28T13:00:14+02:00.png", pattern)
    assert when == dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=UTC) and when.tzinfo == UTC


def test_a_bad_regular_expression_names_the_option():
    with pytest.raises(ValueError, match="--part-from.*not a valid regular expression"):
        compile_pattern(r"(\d+", "--part-from")


def test_a_match_that_is_no_time_names_the_file():
    pattern = compile_pattern(r"^\d+_(\d{12})_", "--time-from")
    with pytest.raises(ValueError, match="01_209999999999_x.jpg: '209999999999' is not a time"):
        time_from_name("/photos/01_209999999999_x.jpg", pattern)
    with pytest.raises(ValueError, match="cam_1.jpg: 'cam' is not a time"):
        time_from_name("cam_1.jpg", compile_pattern(r"^([a-z]+)_", "--time-from"))


def _jpeg(path, **tags) -> None:
    exif = Image.Exif()
    if "original" in tags:
        exif.get_ifd(EXIF_IFD)[EXIF_DATETIME_ORIGINAL] = tags["original"]
    if "changed" in tags:
        exif[EXIF_DATETIME] = tags["changed"]
    Image.new("RGB", (8, 8), (90, 90, 90)).save(path, exif=exif)


def test_exif_time_reads_date_time_original_before_date_time(tmp_path):
    _jpeg(tmp_path / "both.jpg", original="2021:03:04 05:06:07", changed="2022:01:01 00:00:00")
    _jpeg(tmp_path / "changed.jpg", changed="2022:01:01 00:00:00")
    _jpeg(tmp_path / "none.jpg")
    _jpeg(tmp_path / "bad.jpg", original="yesterday")
    assert exif_time_of_file(tmp_path / "both.jpg") == dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert exif_time_of_file(tmp_path / "changed.jpg") == dt.datetime(2022, 1, 1, tzinfo=UTC)
    assert exif_time_of_file(tmp_path / "none.jpg") is None and exif_time_of_file(tmp_path / "bad.jpg") is None
    assert exif_time_of_file(tmp_path / "missing.jpg") is None
    with Image.open(tmp_path / "both.jpg") as image:
        assert exif_time(image).tzinfo == UTC
