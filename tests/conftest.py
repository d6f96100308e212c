"""Shared test settings."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine, intra-op threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A detector with a seeded, untrained network fitted on 12 tiny synthetic images: half of them
# held back to calibrate the threshold (the 0.75 quantile).
TINY_DETECTOR = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=12",
    "data.synthetic.n_test_normal=3",
    "data.synthetic.n_test_defect=3",
    "train.device=cpu",
    "score.pixel_channels=16",
    "score.batch_size=8",
    "score.calibration_fraction=0.5",
    "score.threshold_quantile=0.75",
]


# The demo preset made tiny: 64 x 160 px, 8 training images, one epoch of two steps.
TINY_DEMO = [
    "data.image_size=64",
    "data.image_width=160",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=4",
    "data.synthetic.n_test_defect=4",
    "train.epochs=1",
    "train.batch_size=4",
    "train.device=cpu",
    "score.pixel_channels=16",
    "score.batch_size=8",
]


@pytest.fixture(scope="session")
def tiny_demo_overrides() -> list[str]:
    """The `section.key=value` settings that make the demo preset tiny, for the demo command's tests."""
    return list(TINY_DEMO)


@pytest.fixture(scope="session")
def tiny_detector_overrides() -> list[str]:
    """The `section.key=value` settings of the tiny detector, for tests that train their own."""
    return list(TINY_DETECTOR)


@pytest.fixture(scope="session")
def fit_tiny_detector():
    """fit_tiny_detector(out_dir, *overrides) -> (detector, out_dir / "model.pt", cfg)."""
    from pitscope.config import load_config
    from pitscope.data import build_dataset
    from pitscope.inference import Detector

    def fit(out_dir, *overrides):
        cfg = load_config(None, [*TINY_DETECTOR, *overrides, f"output_dir={out_dir}"])
        torch.manual_seed(cfg.seed)
        detector = Detector(cfg, n_kinds=2).fit(build_dataset(cfg.data, "train", cfg.seed), progress=False)
        return detector, detector.save(out_dir / "model.pt"), cfg

    return fit


@pytest.fixture
def network_input_shapes(monkeypatch):
    """The (H, W) of every batch the training network is fed, appended as training runs."""
    from pitscope.models.network import DoubleSelfSupervisedNet

    seen: list[tuple[int, int]] = []
    forward = DoubleSelfSupervisedNet.forward

    def spy(self, x, *args, **kwargs):
        seen.append(tuple(x.shape[-2:]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(DoubleSelfSupervisedNet, "forward", spy)
    return seen


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium (tests/headless.py) for the page tests; skips where there is none."""
    from headless import start_chromium

    driver = start_chromium(tmp_path / "profile")
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def real_bsdata():
    """The real BSData folder ($PITSCOPE_BSDATA or ../shared/datasets/bsdata); skips where it is absent."""
    from pitscope.data.bsdata import bsdata_root

    try:
        return bsdata_root()
    except FileNotFoundError as exc:
        pytest.skip(f"BSData is not available here: {exc}")


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server for the history tests: $PITSCOPE_TEST_POSTGRES (.ci/run starts
    one), else a throwaway one started here with .ci/postgres; skips where neither is possible."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    url = os.environ.get("PITSCOPE_TEST_POSTGRES")
    if url:
        yield url
        return
    script = Path(__file__).resolve().parents[1] / ".ci" / "postgres"
    if not (script.is_file() and shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("no PostgreSQL here: set PITSCOPE_TEST_POSTGRES or put initdb and pg_ctl on the PATH")
    started = subprocess.run([str(script)], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"could not start PostgreSQL with .ci/postgres: {started.stderr.strip()[-300:]}")
    url, folder = started.stdout.split()
    yield url
    subprocess.run([str(script), "stop", folder], capture_output=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request, tmp_path):
    """A fresh, empty history database on each backend: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "history.sqlite")
        return
    import uuid

    import sqlalchemy as sa

    server = request.getfixturevalue("postgres_server")
    name = f"pitscope_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield str(sa.make_url(server).set(database=name).render_as_string(hide_password=False))
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
