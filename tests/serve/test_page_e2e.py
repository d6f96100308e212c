"""The inspection page driven in a real headless Chromium (Selenium + the distribution's chromedriver).

The real server (uvicorn, 127.0.0.1, a free port) serves a tiny fitted detector whose threshold is
set between the scores of a defect-free and a pitted synthetic photo. Skipped, with the reason,
where selenium, chromium or chromedriver is missing (tests/headless.py; `make test` installs them
where it can).
"""

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from headless import page_errors, wait_for  # skips this module where there is no headless Chromium
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from pitscope.data.synthetic import add_pitting, render_surface
from pitscope.inference import Detector
from pitscope.serve import create_app, serve_in_thread

KEY = "s3cret"


def photo(path: Path, pitted: bool) -> Path:
    """A 96 x 128 synthetic photo, with heavy pitting when `pitted`, saved as PNG."""
    image = render_surface(np.random.default_rng(21), 96, 128)
    if pitted:
        image, _ = add_pitting(image, np.random.default_rng(22), n_pits=(12, 14))
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, fit_tiny_detector):
    """The saved model.pt (its threshold between the two photos' scores) and the files to upload."""
    folder = tmp_path_factory.mktemp("web_e2e")
    detector, model, _ = fit_tiny_detector(folder)
    good, pitted = photo(folder / "good_part.png", False), photo(folder / "pitted_part.png", True)
    scores = [detector.predict(np.asarray(Image.open(p))).score for p in (good, pitted)]
    assert scores[0] < scores[1], f"the tiny detector should score the pitted photo higher: {scores}"
    detector.threshold.fill_((scores[0] + scores[1]) / 2)
    detector.save(model)
    text = folder / "notes.txt"
    text.write_text("this is not an image\n" * 20)
    return {"model": model, "good": good, "pitted": pitted, "text": text, "threshold": float(detector.threshold)}


def serve(app):
    """Run `app` under uvicorn on 127.0.0.1 in a thread; returns (base URL, stop())."""
    return serve_in_thread(app)


@contextmanager
def page_of(browser, app):
    """`app` served, its page open in `browser` with the model loaded; stopped on leaving."""
    url, stop = serve(app)
    try:
        browser.get(url + "/")
        wait_for(
            browser, lambda d: d.find_element(By.ID, "service-status").text.startswith("Connected"), "the model to load"
        )
        yield
    finally:
        stop()


def card(driver, name: str):
    for element in driver.find_elements(By.CSS_SELECTOR, "#results .card"):
        if element.find_element(By.CSS_SELECTOR, ".name").text == name:
            return element
    return None


def verdict(driver, name: str) -> str | None:
    element = card(driver, name)
    if element is None or "pending" in element.get_attribute("class"):
        return None
    return element.find_element(By.CSS_SELECTOR, ".verdict").text.strip("✓✕ ")


def test_verdicts_slider_and_plain_error(files, browser):
    detector = Detector.load(files["model"])
    url, stop = serve(create_app(detector))  # no API key: saving is switched off
    try:
        browser.get(url + "/")
        wait_for(
            browser, lambda d: d.find_element(By.ID, "service-status").text.startswith("Connected"), "the model to load"
        )
        model_panel = browser.find_element(By.ID, "model-info").text
        assert "pitscope-synthetic" in model_panel and "64 × 64" in model_panel
        assert "near chance" not in model_panel  # its training metadata carries no such warning
        assert "Saving is switched off" in browser.find_element(By.ID, "save-status").text
        assert not browser.find_element(By.ID, "threshold-save").is_enabled()

        upload = browser.find_element(By.ID, "file-input")
        upload.send_keys(f"{files['good']}\n{files['pitted']}")
        wait_for(browser, lambda d: verdict(d, "good_part.png") and verdict(d, "pitted_part.png"), "two verdicts")
        assert verdict(browser, "good_part.png") == "OK"
        assert verdict(browser, "pitted_part.png") == "DEFECT"
        assert browser.find_element(By.ID, "summary").text == "2 images: 1 DEFECT, 1 OK."
        region_text = card(browser, "pitted_part.png").find_element(By.CSS_SELECTOR, ".region").text
        assert re.fullmatch(
            r"No defect region predicted on the \d+ × \d+ px photo.*|\d+ predicted defect regions?, \d+ px in all "
            r"\((< 0\.01|\d+(\.\d{1,2})?) % of the \d+ × \d+ px photo\): \d+ px at x .*",
            region_text,
        ), region_text
        shares = browser.execute_script(
            "return [0.003519, 0.12345, 0.00001, 0, 1].map((f) => formatPercentValue(f) + ' %')"
        )
        assert shares == ["0.35 %", "12.3 %", "< 0.01 %", "0 %", "100 %"]
        good = card(browser, "good_part.png")
        good_text = good.find_element(By.CSS_SELECTOR, ".region").text
        assert re.fullmatch(
            r"No defect region predicted on the \d+ × \d+ px photo; the map the regions are cut from is highest at x \d+, y \d+ "
            r"\(.+, regions start above .+\)",
            good_text,
        ), good_text
        image = good.find_element(By.TAG_NAME, "img")
        overlay_src = image.get_attribute("src")
        assert overlay_src.startswith("data:image/png;base64,")
        good.find_element(By.XPATH, ".//label[contains(., 'Heatmap')]").click()
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert image.get_attribute("src") != overlay_src

        slider = browser.find_element(By.ID, "threshold-slider")
        slider.send_keys(Keys.HOME)  # threshold 0: every photo is a defect
        wait_for(browser, lambda d: verdict(d, "good_part.png") == "DEFECT", "the good photo to turn DEFECT")
        assert browser.find_element(By.ID, "summary").text == "2 images: 2 DEFECT, 0 OK."
        slider.send_keys(Keys.END)  # the slider's top is above every score on the page
        wait_for(browser, lambda d: verdict(d, "pitted_part.png") == "OK", "the pitted photo to turn OK")
        assert verdict(browser, "good_part.png") == "OK"
        assert "the model's threshold is still" in browser.find_element(By.ID, "threshold-note").text
        browser.find_element(By.ID, "threshold-reset").click()
        wait_for(browser, lambda d: verdict(d, "pitted_part.png") == "DEFECT", "the verdicts to come back")
        assert float(detector.threshold) == files["threshold"]  # moving the slider stored nothing

        upload.send_keys(str(files["text"]))
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card.error"), "the error")
        error = browser.find_element(By.CSS_SELECTOR, "#results .card.error")
        assert "“notes.txt” is not a picture pitscope can read" in error.text
        assert "PNG, JPEG, BMP or TIFF" in error.text
        assert browser.find_element(By.ID, "summary").text == "2 images: 1 DEFECT, 1 OK. 1 file not scored."
        assert page_errors(browser) == []
    finally:
        stop()


def test_key_prompt_and_saving_a_threshold(files, browser, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(files["model"].read_bytes())
    detector = Detector.load(path)
    url, stop = serve(create_app(detector, api_key=KEY, model_path=path))
    try:
        browser.get(url + "/")
        key_input = wait_for(
            browser,
            lambda d: d.find_element(By.ID, "api-key").is_displayed() and d.find_element(By.ID, "api-key"),
            "the API key prompt",
        )
        key_input.send_keys("wrong" + Keys.ENTER)
        wait_for(browser, lambda d: "not accepted" in d.find_element(By.ID, "key-reason").text, "the key refusal")
        key_input.clear()
        key_input.send_keys(KEY + Keys.ENTER)
        wait_for(
            browser,
            lambda d: d.find_element(By.ID, "service-status").text.startswith("Connected"),
            "the model to load with the key",
        )
        browser.find_element(By.ID, "file-input").send_keys(str(files["pitted"]))
        wait_for(browser, lambda d: verdict(d, "pitted_part.png") == "DEFECT", "the verdict")

        number = browser.find_element(By.ID, "threshold-number")
        number.send_keys(Keys.CONTROL, "a")  # (clear() would fire a change with "", which the page undoes)
        number.send_keys("1000000000.3" + Keys.TAB)  # stored as float32: 1e9
        wait_for(browser, lambda d: verdict(d, "pitted_part.png") == "OK", "the verdict at 1e9")
        browser.find_element(By.ID, "threshold-save").click()
        wait_for(browser, lambda d: d.find_element(By.ID, "save-status").text.startswith("Saved"), "the save")
        assert str(path) in browser.find_element(By.ID, "save-status").text
        assert float(Detector.load(path).threshold) == 1e9
        assert "set by hand" in browser.find_element(By.ID, "model-info").text
        note = browser.find_element(By.ID, "threshold-note").text
        assert note.startswith("Using the model's threshold") and "still" not in note, note
        assert page_errors(browser) == []
    finally:
        stop()


def test_the_model_panel_says_a_defect_probe_fitted_on_marked_photos_draws_the_maps(files, browser, tmp_path):
    from test_warm_start import labelled_folder

    from pitscope.fitting import finetune_probe

    probed = finetune_probe(files["model"], labelled_folder(tmp_path / "marked", n=3), tmp_path, progress=False)
    with page_of(browser, create_app(probed)):
        model_panel = browser.find_element(By.ID, "model-info").text
        assert "maps from a defect probe fitted on 3 photos with marked defects" in model_panel
        assert page_errors(browser) == []
    with page_of(browser, create_app(Detector.load(files["model"]))):
        assert "no marked defect" in browser.find_element(By.ID, "model-info").text


def test_model_panel_warns_when_the_classifier_ended_near_chance(files, browser):
    detector = Detector.load(files["model"])
    detector.metadata.setdefault("training", {})["classifier_near_chance"] = {"cross_entropy": 0.6903, "chance": 0.6931}
    with page_of(browser, create_app(detector)):
        warning = browser.find_element(By.CSS_SELECTOR, "#model-info dd.warning").text
        assert "ended near chance in training (cross-entropy 0.6903, 0.6931 at chance)" in warning
        assert "Train again" in warning
        assert not page_errors(browser)


def test_model_panel_lists_the_training_rollbacks(files, browser):
    detector = Detector.load(files["model"])
    detector.metadata.setdefault("training", {})["rollbacks"] = [
        {"after_epoch": 14, "to_epoch": 12, "lr_scale": 0.5},
        {"after_epoch": 30, "to_epoch": 20, "lr_scale": 0.5, "at_end": True},
    ]
    with page_of(browser, create_app(detector)):
        panel = browser.find_element(By.ID, "model-info").text
        assert "After epoch 14 the pseudo-defect classifier had fallen back to chance" in panel
        assert "went back to epoch 12's weights and went on at 0.5 times the learning rate." in panel
        assert "went back to epoch 20's weights and handed that epoch back as its result." in panel
        assert not page_errors(browser)
    with page_of(browser, create_app(Detector.load(files["model"]))):
        assert "Rollbacks" not in browser.find_element(By.ID, "model-info").text
