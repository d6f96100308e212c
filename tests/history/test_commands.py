"""`predict --db`, `calibrate --write --db` and `pitscope history` on a real SQLite file."""

import csv
import datetime as dt

import numpy as np
import pytest
from PIL import Image

from pitscope.cli import main
from pitscope.data.synthetic import render_surface
from pitscope.history.names import BSDATA_PART, BSDATA_TIME
from pitscope.history.store import HistoryStore

NAMES = [
    "01_200828110014_277500_315_crop_2.png",
    "01_200828150014_277500_315_crop_2.png",
    "01_200828110055_305000_090_crop_2.png",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory, fit_tiny_detector):
    return fit_tiny_detector(tmp_path_factory.mktemp("history-cli"))[1]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(render_surface(np.random.default_rng(i), 64, 64)).save(folder / name)
    return folder


def test_predict_records_every_photo_with_part_and_capture_time_from_its_name(model, photos, tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    status = main(
        [
            "predict",
            str(model),
            str(photos),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--db",
            str(db),
            "--part-from",
            BSDATA_PART,
            "--time-from",
            BSDATA_TIME,
            "--store-images",
            "path",
        ]
    )
    assert status in (0, 1)
    assert "3 of 3 inspections recorded" in capsys.readouterr().out
    rows = HistoryStore(db).inspections(newest_first=False)
    assert [r["name"] for r in rows] == sorted(NAMES)
    assert [r["part"] for r in rows] == ["277500_315", "305000_090", "277500_315"]
    assert rows[0]["captured_at"] == dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=dt.UTC)
    assert all(r["source"] == "cli" and r["image_ref"] == str((photos / r["name"]).resolve()) for r in rows)
    with (tmp_path / "out" / "predictions.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["inspection_id"]) for r in table] == [r["id"] for r in rows]
    assert [float(r["score"]) for r in table] == pytest.approx([r["score"] for r in rows])


def test_calibrate_write_with_db_is_a_new_threshold_version_used_by_later_runs(model, photos, tmp_path, capsys):
    model_copy = tmp_path / "model.pt"
    model_copy.write_bytes(model.read_bytes())
    db = tmp_path / "h.sqlite"
    assert (
        main(["calibrate", str(model_copy), str(photos), "--write", "--db", str(db), "--quantile", "0.5", "--quiet"])
        == 0
    )
    store = HistoryStore(db)
    (mid,) = {e["model_id"] for e in store.events()}
    versions = store.thresholds(mid)
    assert [v.version for v in versions] == [1, 2] and "calibrate --write" in versions[1].how
    change = [e for e in store.events() if e["kind"] == "threshold_change"][0]
    assert change["old"]["image_threshold"] == versions[0].image_threshold
    main(["predict", str(model_copy), str(photos), "--out", str(tmp_path / "out"), "--quiet", "--db", str(db)])
    rows = store.inspections()
    assert {r["threshold_version"] for r in rows} == {2}
    assert {r["image_threshold"] for r in rows} == {versions[1].image_threshold}


def test_history_lists_exports_and_prunes(model, photos, tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    main(
        [
            "predict",
            str(model),
            str(photos),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--db",
            str(db),
            "--part-from",
            BSDATA_PART,
            "--time-from",
            BSDATA_TIME,
        ]
    )
    capsys.readouterr()
    assert main(["history", "--db", str(db), "--part", "277500_315"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 matching inspections" in out and "01_200828150014_277500_315_crop_2.png" in out
    assert main(["history", "--db", str(db), "--since", "2020-08-28T12:00:00Z", "--csv", str(tmp_path / "h.csv")]) == 0
    with (tmp_path / "h.csv").open() as fh:
        exported = list(csv.DictReader(fh))
    assert [r["name"] for r in exported] == ["01_200828150014_277500_315_crop_2.png"]
    assert main(["history", "--db", str(db), "--parts"]) == 0
    assert "305000_090" in capsys.readouterr().out
    assert main(["history", "--db", str(db), "--prune-older-than", "1"]) == 0
    assert "deleted 0 inspections" in capsys.readouterr().out
    assert main(["history", "--db", str(db), "--prune-older-than", "0"]) == 0
    assert "deleted 3 inspections" in capsys.readouterr().out
    assert HistoryStore(db).count() == 0


def test_bad_databases_are_one_clear_line(model, photos, tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all")
    assert main(["history", "--db", str(junk)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err
    assert main(["history", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(model),
                str(photos),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--db",
                str(tmp_path / "no-folder" / "h.sqlite"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(model),
                str(photos),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--db",
                str(tmp_path / "h.sqlite"),
                "--part-from",
                "(unclosed",
            ]
        )
        == 2
    )
    assert "--part-from" in capsys.readouterr().err


def test_predict_alerts_on_the_median_of_a_parts_last_inspections(model, tmp_path, capsys):
    """`predict --db --alert-smooth 2`: the area alert reads the median of the part's last two
    predicted areas, as the recorded areas give it; `history --watch 2` shows that median."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (hour, square) in enumerate(((11, 0), (15, 16), (19, 16))):
        image = render_surface(np.random.default_rng(i), 64, 64).copy()
        image[20 : 20 + square, 20 : 20 + square] = 0  # the tiny detector outlines a black square
        Image.fromarray(image).save(folder / f"01_200828{hour:02d}0014_277500_315_crop_2.png")
    db = tmp_path / "h.sqlite"
    args = ["predict", str(model), str(folder), "--out", str(tmp_path / "out"), "--quiet", "--db", str(db)]
    args += ["--part-from", BSDATA_PART, "--time-from", BSDATA_TIME, "--alert-area", "0", "--alert-growth", "off"]
    assert main([*args, "--alert-smooth", "2"]) in (0, 1)
    store = HistoryStore(db)
    areas = [r["defect_fraction"] for r in store.inspections(newest_first=False)]
    assert areas[0] == 0 and areas[1] > 0, "the square should give the second photo a predicted area"
    (alert,) = store.alerts()  # raised once, on the second photo, and left open
    assert alert["values"]["smooth_images"] == 2
    assert alert["values"]["watched_fraction"] == pytest.approx(np.median(areas[:2]))
    assert "median of the last 2 images" in alert["values"]["rule"]
    capsys.readouterr()
    # the table and the CSV show the median the rule read, the window reaching back before --since
    since = store.inspections(newest_first=False)[1]["captured_at"].isoformat()
    assert main(["history", "--db", str(db), "--part", "277500_315", "--watch", "2", "--since", since]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "watch %" in lines[0]
    watched = {line.split()[-1]: float(line.split()[-2]) for line in lines[1:-1]}
    expected = [np.median(areas[:2]), np.median(areas[1:])]
    assert list(watched.values()) == pytest.approx([100 * e for e in expected[::-1]], abs=1e-3)
    out = tmp_path / "watched.csv"
    assert main(["history", "--db", str(db), "--part", "277500_315", "--watch", "2", "--csv", str(out)]) == 0
    with out.open() as fh:
        exported = list(csv.DictReader(fh))
    assert [float(r["watched_fraction"]) for r in exported] == pytest.approx([areas[0], *expected])
    assert main(["history", "--db", str(db), "--watch", "2"]) == 2
    assert "--watch K needs --part" in capsys.readouterr().err
    assert main(["history", "--db", str(db), "--part", "277500_315", "--watch", "2", "--parts"]) == 2
    assert "not with --parts" in capsys.readouterr().err
