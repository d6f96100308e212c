"""The inspection page as the service serves it, the picture variants of /predict, PUT /threshold.

API level (TestClient); tests/serve/test_page_e2e.py drives the page in a real browser.
"""

import base64
import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pitscope.data.synthetic import render_surface
from pitscope.inference import Detector
from pitscope.serve import WEB_DIR, create_app, heatmap_image
from pitscope.visualize import overlay

KEY = {"X-API-Key": "s3cret"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_tiny_detector):
    """(fitted detector, its saved model.pt); read-only: tests that change a threshold load their own."""
    detector, model, _ = fit_tiny_detector(tmp_path_factory.mktemp("web"))
    return detector, model


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def surface(seed: int) -> np.ndarray:
    return render_surface(np.random.default_rng(seed), 48, 80)  # (48, 80, 3) uint8


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_page_and_assets_come_from_the_service_alone(fitted):
    with TestClient(create_app(fitted[0], api_key="s3cret")) as c:
        page = c.get("/")  # open without the key: the page's own calls carry it
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "http" not in policy
        links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page.text)
        assert "/static/app.js" in links and "/static/style.css" in links
        assert all(not re.match(r"[a-z]+:|//", link, re.I) for link in links), links
        for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            asset = c.get(f"/static/{name}")
            assert asset.status_code == 200 and kind in asset.headers["content-type"]
            assert asset.content == (WEB_DIR / name).read_bytes()
        for name in ("index.html", "app.js", "style.css"):  # no CDN, font or analytics anywhere
            assert not re.search(r"https?://|@import|url\(", (WEB_DIR / name).read_text()), name
        assert c.get("/static/missing.js").status_code == 404
        assert c.get("/static/../serve.py").status_code == 404


def test_map_heatmap_and_embed(fitted):
    detector, _ = fitted
    image = surface(1)
    expected = detector.predict(image)
    with TestClient(create_app(detector)) as c:
        response = c.post("/predict", params={"map": "heatmap"}, files={"file": ("a.png", png(image))})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert float(response.headers["X-Pitscope-Score"]) == expected.score
        heat = decode_png(response.content)
        assert np.array_equal(heat, heatmap_image(expected.anomaly_map, expected.pixel_threshold))
        assert heat.shape == (48, 80, 3)

        body = c.post("/predict", params={"map": "embed"}, files={"file": ("a.png", png(image))}).json()
        assert body["score"] == expected.score and body["is_defective"] == expected.is_defective
        pictures = {}
        for name in ("overlay", "heatmap"):
            prefix = "data:image/png;base64,"
            assert body[name].startswith(prefix)
            pictures[name] = decode_png(base64.b64decode(body[name][len(prefix) :]))
        assert np.array_equal(pictures["overlay"], overlay(image, expected.anomaly_map, expected.pixel_threshold))
        assert np.array_equal(pictures["heatmap"], heat)


def test_heatmap_scale_is_fixed_around_the_pixel_threshold():
    colours = heatmap_image(np.array([[0.0, 1.0, 2.0, 5.0]]), pixel_threshold=1.0)  # (1, 4, 3)
    assert np.array_equal(colours[0, 2], colours[0, 3])  # 2 x pixel threshold and above: the top colour
    assert not np.array_equal(colours[0, 0], colours[0, 1])
    low = heatmap_image(np.array([[0.0, 0.1]]), pixel_threshold=1.0)
    assert not np.array_equal(low[0, 1], colours[0, 2])  # a quiet map stays cool, not rescaled to red


def test_saving_a_threshold_is_refused_without_an_api_key(fitted):
    detector, path = fitted
    before, file_before = float(detector.threshold), path.read_bytes()
    with TestClient(create_app(detector, model_path=path)) as c:
        assert c.get("/model").json()["threshold_saving"] == {"allowed": False, "to_file": True}
        response = c.put("/threshold", json={"threshold": before + 1.0})
        assert response.status_code == 403
        assert "API key" in response.json()["detail"] and "anyone on the network" in response.json()["detail"]
        assert c.get("/model").json()["threshold"] == before
    assert float(detector.threshold) == before and path.read_bytes() == file_before


def test_saving_a_threshold_needs_the_key_and_writes_the_model_file(fitted, tmp_path):
    _, original = fitted
    path = tmp_path / "model.pt"
    path.write_bytes(original.read_bytes())
    detector = Detector.load(path)
    before = float(detector.threshold)
    image = png(surface(2))
    with TestClient(create_app(detector, api_key="s3cret", model_path=path)) as c:
        for headers in ({}, {"X-API-Key": "wrong"}):
            assert c.put("/threshold", json={"threshold": 1.0}, headers=headers).status_code == 401
        for bad in ({"threshold": "abc"}, {"threshold": True}, {}, {"value": 1.0}):
            response = c.put("/threshold", json=bad, headers=KEY)
            assert response.status_code == 422 and "threshold" in response.json()["detail"]
        nan = b'{"threshold": NaN}'
        response = c.put("/threshold", content=nan, headers={**KEY, "content-type": "application/json"})
        assert response.status_code == 422
        assert float(detector.threshold) == before

        score = c.post("/predict", files={"file": ("a.png", image)}, headers=KEY).json()["score"]
        new = score - 0.5  # this image becomes a defect
        response = c.put("/threshold", json={"threshold": new}, headers=KEY)
        assert response.status_code == 200, response.text
        pixel = float(detector.pixel_threshold)  # image_mean maps do not depend on the image threshold
        assert response.json() == {
            "threshold": new,
            "pixel_threshold": pixel,
            "previous": before,
            "saved_to": str(path),
        }
        info = c.get("/model", headers=KEY).json()
        assert info["threshold"] == new and info["threshold_saving"] == {"allowed": True, "to_file": True}
        assert info["calibration"]["source"].startswith("set by hand")
        assert info["calibration"]["previous"] == {"threshold": before}
        assert info["calibration"]["replaces"]["quantile"] == 0.75  # the fit's record is kept
        body = c.post("/predict", files={"file": ("a.png", image)}, headers=KEY).json()
        assert body["threshold"] == new and body["is_defective"]

        again = c.put("/threshold", json={"threshold": new + 1}, headers=KEY).json()  # history does not nest
        assert "replaces" not in c.get("/model", headers=KEY).json()["calibration"]["replaces"]
        assert again["previous"] == new
    reloaded = Detector.load(path)
    assert float(reloaded.threshold) == pytest.approx(new + 1)
    assert reloaded.metadata["calibration"]["threshold"] == pytest.approx(new + 1)


def test_a_new_threshold_moves_the_pixel_threshold_of_maps_scaled_by_the_score(fitted):
    _, path = fitted
    detector = Detector.load(path)
    detector.cfg.score.map_normalisation = "image_score"
    before, pixel_before = float(detector.threshold), float(detector.pixel_threshold)
    image = png(surface(2))
    with TestClient(create_app(detector, api_key="s3cret")) as c:
        first = c.post("/predict", files={"file": ("a.png", image)}, headers=KEY).json()
        for bad in (0.0, -1.0):
            response = c.put("/threshold", json={"threshold": bad}, headers=KEY)
            assert response.status_code == 422 and "above 0" in response.json()["detail"]
        assert float(detector.threshold) == before
        answer = c.put("/threshold", json={"threshold": 2 * before}, headers=KEY).json()
        assert answer["pixel_threshold"] == pytest.approx(pixel_before / 2, rel=1e-6)
        assert c.get("/model", headers=KEY).json()["calibration"]["previous"] == {
            "threshold": before,
            "pixel_threshold": pixel_before,
        }
        second = c.post("/predict", files={"file": ("a.png", image)}, headers=KEY).json()
    # the map halves with the doubled threshold, and so does the pixel threshold: the same regions
    assert second["pixel_threshold"] == pytest.approx(first["pixel_threshold"] / 2, rel=1e-6)
    assert len(second["regions"]) == len(first["regions"]) > 0
    for a, b in zip(first["regions"], second["regions"], strict=True):
        assert {**a, "peak": None} == {**b, "peak": None} and b["peak"] == pytest.approx(a["peak"] / 2, rel=1e-5)


def test_threshold_without_a_model_path_lives_in_memory(fitted):
    _, path = fitted
    detector = Detector.load(path)
    with TestClient(create_app(detector, api_key="s3cret")) as c:
        assert c.get("/model", headers=KEY).json()["threshold_saving"] == {"allowed": True, "to_file": False}
        response = c.put("/threshold", json={"threshold": 3}, headers=KEY)
        assert response.status_code == 200 and response.json()["saved_to"] is None
    assert float(detector.threshold) == 3.0


def test_a_failed_write_changes_nothing(fitted, tmp_path, monkeypatch):
    _, path = fitted
    detector = Detector.load(path)
    before, calibration = float(detector.threshold), dict(detector.metadata["calibration"])

    def full_disk(target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(detector, "save", full_disk)
    with TestClient(create_app(detector, api_key="s3cret", model_path=tmp_path / "m.pt")) as c:
        response = c.put("/threshold", json={"threshold": before + 1}, headers=KEY)
        assert response.status_code == 500
        assert response.json()["detail"] == (
            "the threshold was not changed: could not write the model file (No space left on device)"
        )
        assert c.get("/model", headers=KEY).json()["threshold"] == before
    assert detector.metadata["calibration"] == calibration
