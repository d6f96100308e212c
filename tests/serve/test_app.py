"""The HTTP service: answers agree with Detector.predict, bad uploads get a clear 4xx, the key guards.

The detector is the tiny untrained one of test_inference (64 px synthetic images, 16 pixel
channels): the service is tested, not the model.
"""

import argparse
import asyncio
import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pitscope import __version__
from pitscope.cli.serve import add_parsers as add_serve_parsers
from pitscope.data.synthetic import render_surface
from pitscope.inference import Detector, Prediction
from pitscope.serve import RejectedImage, create_app, decode_image


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_tiny_detector):
    """(fitted detector, its saved model.pt); read-only for the tests of this module."""
    detector, model, _ = fit_tiny_detector(tmp_path_factory.mktemp("serve"))
    return detector, model


@pytest.fixture(scope="module")
def client(fitted):
    with TestClient(create_app(fitted[0])) as c:
        yield c


def surface(seed: int, height: int = 48, width: int = 80) -> np.ndarray:
    """A synthetic (height, width, 3) uint8 photograph; not square, so a swapped H and W shows."""
    return render_surface(np.random.default_rng(seed), height, width)


def encode(image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, fmt)
    return buffer.getvalue()


def post(client, data: bytes, name: str = "part.png", **params):
    return client.post("/predict", params=params, files={"file": (name, data, "application/octet-stream")})


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (CRC fixed): tiny file, huge promised image."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length, type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of type + 13 data bytes
    return bytes(data)


def test_predict_agrees_with_the_detector(fitted, client):
    detector, _ = fitted
    image = surface(1)
    response = post(client, encode(image))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = detector.predict(image)
    assert body["score"] == expected.score
    assert body["is_defective"] == expected.is_defective
    assert body["threshold"] == float(detector.threshold)
    assert body["pixel_threshold"] == float(detector.pixel_threshold)
    assert (body["width"], body["height"]) == (80, 48)
    assert body["defect_fraction"] == pytest.approx(float(expected.defect_region.mean()))
    assert body["defect_px"] == int(expected.defect_region.sum())
    assert body["region_count"] == len(expected.regions) and len(body["regions"]) == min(len(expected.regions), 50)
    assert body["regions"] == [r.to_dict() for r in expected.regions[:50]]
    assert sum(r["area_px"] for r in body["regions"]) <= body["defect_px"]
    assert body["peak"] == expected.peak()
    assert body["model"] == {"name": "pitscope-synthetic", "version": __version__}


def test_the_answer_lists_each_region_with_its_box(fitted, monkeypatch):
    detector, _ = fitted
    image = surface(2)
    amap = np.zeros((48, 80), np.float32)
    amap[5:9, 10:20] = 10.0  # 40 px
    amap[30:32, 60:61] = 10.0  # 2 px: under a min_region_fraction of 10 / 3840
    fake = Prediction(9.0, amap, True, 1.0, 1.0, 10 / (48 * 80), "all")
    monkeypatch.setattr(detector, "predict", lambda *a, **k: fake)
    body = (
        TestClient(create_app(detector)).post("/predict", files={"file": ("p.png", encode(image), "image/png")}).json()
    )
    assert body["region_count"] == 1 and body["defect_px"] == 40
    assert body["regions"] == [{"area_px": 40, "fraction": 40 / 3840, "box": [10, 5, 20, 9], "peak": 10.0}]
    assert body["peak"] == {"x": 10, "y": 5, "value": 10.0}


def test_threshold_override(client):
    data = encode(surface(2))
    score = post(client, data).json()["score"]
    below, above = post(client, data, threshold=score - 1.0).json(), post(client, data, threshold=score + 1.0).json()
    assert below["is_defective"] and below["threshold"] == score - 1.0
    assert not above["is_defective"] and above["threshold"] == score + 1.0
    for bad in ("abc", "nan", "inf"):
        response = post(client, data, threshold=bad)
        assert response.status_code == 422
        assert "threshold" in response.json()["detail"]


def test_map_png_is_the_overlay_at_the_input_size(fitted, client):
    from pitscope.visualize import overlay

    detector, _ = fitted
    image = surface(3)
    response = post(client, encode(image), map="png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (80, 48) and picture.mode == "RGB"
    expected = detector.predict(image)
    assert np.array_equal(np.asarray(picture), overlay(image, expected.anomaly_map, expected.pixel_threshold))
    assert float(response.headers["X-Pitscope-Score"]) == expected.score
    assert post(client, encode(image), map="jpeg").status_code == 422


def test_health_and_model(fitted, client):
    detector, _ = fitted
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["image_size"] == 64 and info["image_shape"] == [64, 64] and info["data_format"] == "synthetic"
    assert info["threshold"] == float(detector.threshold)
    assert info["pixel_threshold"] == float(detector.pixel_threshold)
    assert info["calibration"] == detector.metadata["calibration"]
    assert info["limits"] == {"max_upload_bytes": 20 * 1024 * 1024, "max_pixels": 50_000_000}
    assert "metrics" not in info and info["reference_photos"] == []


def test_model_info_names_the_reference_photos(fitted):
    detector, _ = fitted
    saved = detector.metadata.get("references")
    detector.metadata["references"] = [
        {"path": "/photos/station7/a.png", "sha256": "0" * 64},
        {"path": "/photos/station7/b.png", "sha256": "1" * 64},
    ]
    try:
        with TestClient(create_app(detector)) as c:
            assert c.get("/model").json()["reference_photos"] == ["a.png", "b.png"]
    finally:
        if saved is None:
            del detector.metadata["references"]
        else:
            detector.metadata["references"] = saved


def test_api_key_guards_everything_but_health(fitted):
    data = encode(surface(4))
    with TestClient(create_app(fitted[0], api_key="s3cret", max_upload_bytes=1000)) as c:
        assert c.get("/health").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret "}):
            assert c.get("/model", headers=headers).status_code == 401
            response = c.post("/predict", headers=headers, files={"file": ("a.png", data)})
            assert response.status_code == 401  # before the body is read: not 413
            assert "X-API-Key" in response.json()["detail"]
        assert c.get("/model", headers={"X-API-Key": "s3cret"}).status_code == 200
    with TestClient(create_app(fitted[0], api_key="s3cret")) as c:
        response = c.post("/predict", headers={"X-API-Key": "s3cret"}, files={"file": ("a.png", data)})
        assert response.status_code == 200


def test_loaded_model_and_16_bit_and_rgba_uploads(fitted):
    detector, path = fitted
    with TestClient(create_app(Detector.load(path))) as c:
        wide = (surface(5)[:, :, 0].astype(np.uint16) * 257 + 100).astype(np.uint16)  # (48, 80)
        rgba = np.dstack([surface(6), np.full((48, 80), 128, np.uint8)])  # (48, 80, 4)
        for array in (wide, rgba):
            upload = Image.open(io.BytesIO(encode(array)))
            assert upload.mode in ("I;16", "I", "RGBA")
            response = post(c, encode(array))
            assert response.status_code == 200, response.text
            assert response.json()["score"] == pytest.approx(detector.predict(array).score, rel=1e-6)
            assert (response.json()["width"], response.json()["height"]) == (80, 48)


@pytest.mark.parametrize(
    "files, status, words",
    [
        (None, 422, "field 'file'"),
        ({"other": ("a.png", b"123")}, 422, "field 'file'"),
        ({"file": ("a.png", b"")}, 422, "empty"),
        ({"file": ("notes.txt", b"this is not an image\n" * 20)}, 415, "not an image"),
        ({"file": ("bomb.png", png_declaring(100_000, 100_000))}, 422, "too large"),
        ({"file": ("bomb.png", png_declaring(8000, 8000))}, 422, "8000x8000"),
    ],
    ids=["no-body", "no-file-field", "empty-file", "text-file", "bomb-pillow-limit", "bomb-our-limit"],
)
def test_bad_uploads_get_a_clear_4xx(client, files, status, words):
    response = client.post("/predict", files=files)
    assert response.status_code == status
    assert words in response.json()["detail"]


def test_text_value_and_truncated_jpeg(client):
    response = client.post("/predict", data={"file": "hello"})
    assert response.status_code == 422 and "file upload" in response.json()["detail"]
    jpeg = encode(surface(7, 128, 128), "JPEG")
    response = post(client, jpeg[: len(jpeg) // 2], name="cut.jpg")
    assert response.status_code == 422
    assert "truncated or corrupt image" in response.json()["detail"]
    assert post(client, jpeg, name="whole.jpg").status_code == 200


def test_exif_orientation_is_applied(client):
    picture = Image.fromarray(surface(11))  # 80 x 48
    exif = picture.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif.tobytes())
    body = post(client, buffer.getvalue(), name="rotated.jpg").json()
    assert (body["width"], body["height"]) == (48, 80)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_declaring(8000, 8000)
    with pytest.raises(RejectedImage, match="8000x8000") as info:
        decode_image(bomb, max_pixels=50_000_000)
    assert info.value.status_code == 422
    with pytest.raises(RejectedImage, match="truncated or corrupt image"):  # a higher limit lets it decode
        decode_image(bomb, max_pixels=64_000_000)


def test_upload_size_limit(fitted):
    small = encode(np.full((32, 32, 3), 90, np.uint8))
    assert len(small) < 1000
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)

    def chunked():  # no Content-Length: the limit must hold on the streamed bytes
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 4096
        yield b"\r\n--b--\r\n"

    with TestClient(create_app(fitted[0], max_upload_bytes=1000)) as c:
        assert post(c, small).status_code == 200
        responses = [
            post(c, b"x" * 1500),  # the file is over; the body is within the form allowance
            post(c, encode(noise)),  # Content-Length is over: refused before reading
            c.post("/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"}),
        ]
    for response in responses:
        assert response.status_code == 413
        assert response.json()["detail"].startswith("upload too large: the limit is 1000 bytes")


def call_asgi(app, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, int]:
    """POST /predict straight to the ASGI app: (response status, how many body chunks it read)."""
    read = 0
    sent = []

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "test", **headers}.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], read


def test_oversized_bodies_are_not_read(fitted):
    app = create_app(fitted[0], max_upload_bytes=1000)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunks = [head] + [b"x" * 4096] * 1000  # 4 MB
    form = {"content-type": "multipart/form-data; boundary=b"}
    assert call_asgi(app, {**form, "content-length": str(10**8)}, chunks) == (413, 0)
    status, read = call_asgi(app, form, chunks)  # no Content-Length: stops once over the limit
    assert status == 413 and read <= 2 + (1000 + 64 * 1024) // 4096


def test_scoring_leaves_the_event_loop_free(fitted, client, monkeypatch):
    detector, _ = fitted
    started, release = threading.Event(), threading.Event()
    predict = detector.predict

    def slow_predict(*args, **kwargs):
        started.set()
        release.wait(timeout=30)
        return predict(*args, **kwargs)

    monkeypatch.setattr(detector, "predict", slow_predict)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(post, client, encode(surface(9)))
        assert started.wait(timeout=30)
        assert client.get("/health").status_code == 200  # answered while the image is being scored
        assert not pending.done()
        release.set()
        assert pending.result(timeout=30).status_code == 200


def test_concurrent_requests_are_serialised_and_agree(fitted, client, monkeypatch):
    detector, _ = fitted
    uploads = [encode(surface(10 + i)) for i in range(4)]
    sequential = [post(client, data).json()["score"] for data in uploads]

    active, most = 0, 0
    guard = threading.Lock()
    predict = detector.predict

    def counting_predict(*args, **kwargs):
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        try:
            return predict(*args, **kwargs)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(detector, "predict", counting_predict)
    jobs = [i % 4 for i in range(8 * 3)]  # 8 threads x 3 requests
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda i: post(client, uploads[i]), jobs))
    assert [r.status_code for r in responses] == [200] * len(jobs)
    assert [r.json()["score"] for r in responses] == [sequential[i] for i in jobs]
    assert most == 1


def test_unexpected_error_is_a_generic_500_and_the_server_goes_on(fitted, monkeypatch):
    detector, _ = fitted

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    app = create_app(detector)
    monkeypatch.setattr(detector, "predict", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = post(c, encode(surface(8)))
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error (logged on the server)"}
        assert c.get("/health").status_code == 200
    with TestClient(app) as c, pytest.raises(RuntimeError, match="secret"):  # re-raised for the server to log
        post(c, encode(surface(8)))


def test_create_app_refuses_an_unfitted_detector_and_an_empty_key(fitted):
    with pytest.raises(ValueError, match="threshold"):
        create_app(Detector(fitted[0].cfg, n_kinds=2))
    with pytest.raises(ValueError, match="api_key"):
        create_app(fitted[0], api_key="")


def test_serve_command_builds_the_app_and_runs_uvicorn(fitted, monkeypatch):
    import uvicorn

    _, path = fitted
    parser = argparse.ArgumentParser(prog="pitscope")
    add_serve_parsers(parser.add_subparsers(dest="command"))
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("PITSCOPE_API_KEY", "from-env")

    args = parser.parse_args(["serve", str(path), "--port", "8123", "--max-upload-mb", "0.5"])
    assert args.func(args) == 0
    app, kwargs = calls[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    with TestClient(app) as c:
        assert c.get("/model").status_code == 401
        info = c.get("/model", headers={"X-API-Key": "from-env"}).json()
        assert info["limits"]["max_upload_bytes"] == 512 * 1024
        assert info["threshold"] == float(fitted[0].threshold)

    args = parser.parse_args(["serve", str(path.parent / "missing.pt")])
    with pytest.raises(FileNotFoundError):
        args.func(args)
    monkeypatch.delenv("PITSCOPE_API_KEY")
    assert parser.parse_args(["serve", "m.pt"]).api_key is None


def test_tiny_images_are_refused_and_the_favicon_is_no_404(client):
    response = post(client, encode(np.zeros((1, 1, 3), np.uint8)), name="dot.png")
    assert response.status_code == 422 and "1x1 pixels: too small" in response.json()["detail"]
    assert post(client, encode(surface(3, 32, 32)), name="small.png").status_code == 200
    assert client.get("/favicon.ico").status_code == 204


def test_pillows_own_size_guard_is_reported_as_the_services_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's guard fires before ours
    with pytest.raises(RejectedImage, match=r"over the limit of 50000000 pixels \(50 megapixels\)"):
        decode_image(png_declaring(100, 100), max_pixels=50_000_000)


def test_the_model_panel_shows_the_evaluation_stored_beside_the_model(fitted, tmp_path):
    import json

    detector, path = fitted
    model = tmp_path / "model.pt"
    model.write_bytes(path.read_bytes())
    with TestClient(create_app(detector, model_path=model)) as c:
        assert "metrics" not in c.get("/model").json()  # nothing evaluated yet
    (tmp_path / "eval").mkdir()
    record = {
        "metrics": {"image_auroc": 0.97, "pixel_auroc": 0.91},
        "counts": {"images": 48},
        "threshold": 1.5,
        "at_threshold": {"true_positive_rate": 0.9, "false_positive_rate": 0.05},
        "seconds": 3.0,
    }
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(record))
    with TestClient(create_app(detector, model_path=model)) as c:
        shown = c.get("/model").json()["metrics"]
    assert shown["metrics"] == record["metrics"] and shown["at_threshold"] == record["at_threshold"]
    assert shown["file"] == "eval/metrics.json" and "seconds" not in shown
    (tmp_path / "eval" / "metrics.json").write_text("{broken")
    with TestClient(create_app(detector, model_path=model)) as c:
        assert "metrics" not in c.get("/model").json()
