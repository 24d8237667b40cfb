"""The demo in a real browser: the server on 127.0.0.1 (a free port) with seeded tiny models in the quickstart's
layout, driven by headless Chromium through selenium (Debian's chromium + chromium-driver; nothing is downloaded).
Reconstruct and Generate run as a user would, the page's numbers are checked against the command-line drivers, bad
input must show a message, and screenshots of both tabs are saved in the test's tmp folder."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testlib import PHOTOS, REPO, child_env, free_port, make_quickstart_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = []  # what the test needs and this machine lacks
if not (CHROMIUM and CHROMEDRIVER):
    MISSING.append("Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run "
                   "installs them)")
if importlib.util.find_spec("gradio") is None:
    MISSING.append("gradio, the demo extra (bash env_install.sh --test installs it)")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    MISSING.append("selenium (bash env_install.sh --test installs it)")
# CI (GIGATOK_REQUIRE_BROWSER=1) must run the test: there a missing piece fails it (the fixture below) instead of
# skipping it. The skip is a mark, not a module-level pytest.skip, so a run that deselects the browser marker
# (`pytest -m cuda`, benchmarks/device_check.sh) does not report this module at all.
REQUIRED = os.environ.get("GIGATOK_REQUIRE_BROWSER") == "1"
SKIP_REASON = "needs " + "; ".join(MISSING)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(bool(MISSING) and not REQUIRED, reason=SKIP_REASON)]


@pytest.fixture(scope="module", autouse=True)
def _browser_parts_present():
    if MISSING:
        pytest.fail(f"GIGATOK_REQUIRE_BROWSER=1 (CI) but the browser test {SKIP_REASON}", pytrace=False)


PHOTO = PHOTOS / "photos" / "chelsea.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    models = make_quickstart_models(root / "quickstart")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "autoregressive.demo", "--quickstart", str(models), "--no-released",
                             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--threads", "1",
                             "--output-dir", str(root / "out"), "--max-images", "6"],
                            cwd=REPO, env=child_env(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1"),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the demo did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"url": url, "root": root, "models": models}
    proc.terminate()  # the server stops with the tests
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=120, what="the page"):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: condition(d))
    except Exception as exc:  # noqa: BLE001 - add what was awaited, and what the page showed, to the failure
        shown = driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot("/tmp/demo_browser_failure.png")
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{shown[-2000:]}") from exc


def _run(driver, button_id: str, condition, timeout: float, what: str) -> None:
    """Click ``button_id`` until ``condition`` holds: gradio ignores a click while an upload is still being
    processed (it shows a "waiting for files" toast), so a click right after an upload can be lost."""
    deadline = time.time() + timeout
    while True:
        driver.find_element(By.ID, button_id).click()
        try:
            _wait(driver, condition, min(20, max(1, deadline - time.time())), what)
            return
        except AssertionError:
            if time.time() >= deadline:
                raise


def _text(driver, elem_id: str) -> str:
    return driver.find_element(By.ID, elem_id).text


def _upload(driver, path: Path) -> None:
    field = driver.find_element(By.CSS_SELECTOR, "#recon-upload input[type=file]")
    field.send_keys(str(path))
    # gradio shows a long name's stem and extension in separate boxes: compare without the line breaks
    _wait(driver, lambda d: path.name in _text(d, "recon-upload").replace("\n", ""), 60, f"the upload of {path.name}")


def _clear_upload(driver) -> None:
    buttons = driver.find_elements(By.CSS_SELECTOR, "#recon-upload button[aria-label='Clear']")
    if buttons:
        buttons[0].click()


def _set_number(driver, elem_id: str, value) -> None:
    box = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} input[type=number]"), 30,
                f"the number box of {elem_id}")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def _set_dropdown_text(driver, elem_id: str, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE, text)
    box.send_keys(Keys.ENTER)
    driver.find_element(By.TAG_NAME, "h1").click()  # blur: a custom value is committed


def test_reconstruct_and_generate_in_chromium(server, browser, tmp_path):
    started = time.time()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(server["url"])
    _wait(browser, lambda d: d.find_elements(By.ID, "recon-run"), 60, "the page to load")

    # ----- Reconstruct: upload a shipped photo
    photo = tmp_path / PHOTO.name
    shutil.copy(PHOTO, photo)
    _upload(browser, photo)
    _run(browser, "recon-run", lambda d: "PSNR" in _text(d, "recon-metrics"), 120, "the reconstruction")
    metrics = _text(browser, "recon-metrics")
    shown_psnr = float(re.search(r"PSNR\s+([\d.]+)\s*dB", metrics).group(1))
    img = browser.find_element(By.CSS_SELECTOR, "#recon-pair img")
    _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 30,
          "the result image")
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert size == [64, 32]  # original | reconstruction of the 32 x 32 tokenizer
    heat = browser.find_element(By.CSS_SELECTOR, "#recon-codes img")
    assert browser.execute_script("return arguments[0].naturalWidth", heat) == 256  # 8 x 8 codes, 32 px each
    assert re.search(r"codebook usage\s+\d+ distinct codes of 256", metrics), metrics
    browser.save_screenshot(str(shots / "reconstruct.png"))

    # the same number from the command-line driver on the same image
    from tokenizer.reconstruct import main as reconstruct
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(PHOTO, folder / PHOTO.name)
    ckpt = server["models"] / "tokenizer" / "VQ_tiny32_2d" / "checkpoints" / "0000002.pt"
    ref = reconstruct(["--data-path", str(folder), "--image-size", "32", "--vq-ckpt", str(ckpt),
                       "--model-config", str(server["models"] / "tokenizer" / "VQ_tiny32_2d" / "config.yaml"),
                       "--sample-dir", str(tmp_path / "rec"), "--device", "cpu", "--num-workers", "0"])
    assert shown_psnr == pytest.approx(ref["psnr"], abs=5e-5), (shown_psnr, ref["psnr"])

    # bad input: a file that is no image gets a message in the page
    _clear_upload(browser)
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture")
    _upload(browser, fake)
    _run(browser, "recon-run", lambda d: "not an image" in _text(d, "recon-message"), 60, "the bad-upload message")
    assert "Traceback" not in browser.page_source

    # ----- Generate: 3 images of class 3
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Generate')]").click()
    _wait(browser, lambda d: d.find_element(By.ID, "gen-run").is_displayed(), 30, "the Generate tab")
    _set_dropdown_text(browser, "gen-class", "Dress")
    _set_number(browser, "gen-num", 3)
    _set_number(browser, "gen-seed", 5)
    browser.find_element(By.ID, "gen-run").click()
    _wait(browser, lambda d: "saved in" in _text(d, "gen-message"), 180, "the generated images")
    cells = browser.find_elements(By.CSS_SELECTOR, "#gen-gallery .thumbnail-item img, #gen-gallery .grid-wrap img")
    assert len(cells) == 3
    assert "class 3 (Dress)" in _text(browser, "gen-message")
    files = _text(browser, "gen-files")
    assert "settings.json" in files and files.count(".png") == 3
    browser.save_screenshot(str(shots / "generate.png"))
    outputs = sorted((server["root"] / "out").glob("generate-*/class0003_seed5_*.png"))
    assert len(outputs) == 3

    # bad input: a class id out of range
    _set_dropdown_text(browser, "gen-class", "42")
    browser.find_element(By.ID, "gen-run").click()
    _wait(browser, lambda d: "out of range" in _text(d, "gen-message"), 60, "the out-of-range message")
    assert "Traceback" not in browser.page_source
    browser.save_screenshot(str(shots / "generate_error.png"))
    print(f"browser test: {time.time() - started:.0f} s; screenshots in {shots}")
