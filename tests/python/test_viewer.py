"""The viewer page of `minigpt-med serve` (`GET /`), driven in headless Chromium through Selenium.

It uploads an image, asks a question and compares the streamed answer with `minigpt-med generate
--json` for the same image, task and options; drags an identify region and checks its corners in
image pixels; re-opens a saved answer and checks where its boxes are drawn (the tiny test model
has random weights and never writes boxes); renders a DICOM with a window preset; downloads the
answer as JSON and PNG.

Needs selenium, /usr/bin/chromium and /usr/bin/chromedriver (paths overridable with
MINIGPT_MED_CHROMIUM and MINIGPT_MED_CHROMEDRIVER), else the module is skipped (a failure
under CI=true). With MINIGPT_MED_SCREENSHOT set, the box view is saved to docs/img/viewer.png.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _server import TINY, Server, generate_json  # noqa: E402

CHROMIUM = os.environ.get("MINIGPT_MED_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MINIGPT_MED_CHROMEDRIVER", "/usr/bin/chromedriver")

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

if webdriver is None:
    MISSING = "selenium is not installed (pip install selenium)"
elif not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    MISSING = f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
else:
    MISSING = None
if MISSING:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"the viewer test {MISSING}")
    pytest.skip(MISSING, allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
CT = TINY / "images" / "ct_nlst.png"
DICOM = ROOT / "tests" / "fixtures" / "dicom" / "CT_small.dcm"
RUN_TIMEOUT = 120  # seconds: the tiny model answers in well under one, CI machines are slow


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with Server() as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
    })
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
    except Exception:  # older drivers: the prefs above do it
        pass
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The viewer, freshly loaded; afterwards, no JavaScript error in the browser's console."""
    browser.set_window_size(1280, 900)
    for f in browser.downloads.iterdir():
        f.unlink()
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    browser.get_log("browser")  # drop anything logged before this test
    yield browser
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"


# --- helpers ---------------------------------------------------------------------------------


def by_id(d, id_: str):
    return d.find_element(By.ID, id_)


def js(d, script: str, *args):
    return d.execute_script(script, *args)


def upload(d, path: Path, window: str = "auto") -> dict:
    """Chooses `path` in #file and waits until its rendering is shown; returns the image's sizes."""
    by_id(d, "file").send_keys(str(path))
    try:
        WebDriverWait(d, RUN_TIMEOUT).until(lambda d: js(d, """
            const img = document.getElementById('image');
            return document.getElementById('stage').dataset.state === 'ready' && img.complete
                && img.naturalWidth > 0 && img.dataset.window === arguments[0];""", window))
    except TimeoutException:
        raise AssertionError(f"{path.name} was not shown: status {status(d)}") from None
    return image_geometry(d)


def image_geometry(d) -> dict:
    return js(d, """
        const img = document.getElementById('image'), r = img.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight};""")


def status(d) -> tuple[str, str]:
    el = by_id(d, "status")
    return el.get_attribute("data-state"), js(d, "return arguments[0].textContent", el)


def set_value(d, id_: str, value: str) -> None:
    el = by_id(d, id_)
    el.clear()
    el.send_keys(value)


def choose(d, id_: str, value: str) -> None:
    Select(by_id(d, id_)).select_by_value(value)


def answer_text(d) -> str:
    return js(d, "return document.getElementById('answer').textContent")


def run(d) -> str:
    """Clicks #run, waits for the answer to finish; returns the status text (asserts it is done)."""
    by_id(d, "run").click()
    try:
        WebDriverWait(d, RUN_TIMEOUT).until(lambda d: status(d)[0] in ("done", "error"))
    except TimeoutException:
        raise AssertionError(f"no answer within {RUN_TIMEOUT} s: status {status(d)}") from None
    state, text = status(d)
    assert state == "done", f"the run failed: {text}"
    assert by_id(d, "run").is_enabled() and not by_id(d, "stop").is_enabled()
    return text


def downloaded(d, name: str) -> Path:
    path = d.downloads / name
    deadline = time.time() + 30
    while time.time() < deadline:
        if path.exists() and path.stat().st_size > 0 and not list(d.downloads.glob("*.crdownload")):
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded (have {[p.name for p in d.downloads.iterdir()]})")


def rect_in_image(d, el) -> dict:
    """An element's rectangle relative to the image's top-left corner, in CSS pixels."""
    return js(d, """
        const r = arguments[0].getBoundingClientRect();
        const i = document.getElementById('image').getBoundingClientRect();
        return {x1: r.left - i.left, y1: r.top - i.top, x2: r.right - i.left, y2: r.bottom - i.top};""", el)


def gray_pixels(d) -> list[int]:
    """The shown image's pixels (red channel: the rendering is gray), read back through a canvas."""
    return js(d, """
        const img = document.getElementById('image');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const px = g.getImageData(0, 0, c.width, c.height).data, out = [];
        for (let i = 0; i < px.length; i += 4) out.push(px[i]);
        return out;""")


def expected_gray(path: Path) -> list[int]:
    from PIL import Image

    with Image.open(path) as im:
        return list(im.convert("L").tobytes())


# --- tests -----------------------------------------------------------------------------------


def test_page_is_self_contained(page):
    html = page.page_source
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the viewer loads something remote"
    assert "not a medical device" in page.find_element(By.TAG_NAME, "footer").text
    for id_ in ("file", "window-preset", "task", "prompt", "max-tokens", "temperature", "api-key", "run",
                "stop", "status", "answer", "download-png", "download-json", "open-json", "image",
                "region", "region-text"):
        assert page.find_elements(By.ID, id_), f"#{id_} is missing"
    assert [o.get_attribute("value") for o in Select(by_id(page, "task")).options] == \
        ["report", "vqa", "detection", "refer", "grounding", "identify"]
    assert [o.get_attribute("value") for o in Select(by_id(page, "window-preset")).options] == \
        ["", "lung", "mediastinum", "bone", "brain", "abdomen"]


def test_refer_streams_the_cli_answer_and_downloads_it(page):
    geo = upload(page, CT)
    assert (geo["naturalWidth"], geo["naturalHeight"]) == png_size(CT)
    choose(page, "task", "refer")
    assert by_id(page, "prompt").get_attribute("placeholder") == "the nodule in the left lung"
    set_value(page, "prompt", "the nodule")
    set_value(page, "max-tokens", "20")
    done = run(page)

    expected = generate_json("--image", str(CT), "--task", "refer", "--prompt", "the nodule",
                             "--max-new-tokens", "20")
    assert answer_text(page) == expected["text"]
    assert re.match(rf"done: {expected['stop_reason']}, {len(expected['token_ids'])} tokens, [0-9.]+ tok/s$",
                    done), done

    by_id(page, "download-json").click()
    saved = json.loads(downloaded(page, "minigpt-med-answer.json").read_text())
    assert saved["text"] == expected["text"]
    assert saved["task"] == "refer"
    assert saved["instruction"] == "[refer] the nodule"
    assert saved["boxes"] == expected["boxes"]
    assert saved["stop_reason"] == expected["stop_reason"]
    assert saved["image"] == {"width": geo["naturalWidth"], "height": geo["naturalHeight"]}
    assert "tokens_per_s" in saved["timings"]

    by_id(page, "download-png").click()
    assert png_size(downloaded(page, "minigpt-med-answer.png")) == png_size(CT)


def test_identify_region_is_dragged_in_image_pixels(page):
    geo = upload(page, CT)
    choose(page, "task", "identify")
    by_id(page, "run").click()
    WebDriverWait(page, 10).until(lambda d: status(d)[0] == "error")
    assert "region" in status(page)[1]

    # Drag from 100 px left of / 80 px above the image's centre, 150 px right and 120 px down.
    img = by_id(page, "image")
    start, move = (-100, -80), (150, 120)
    ActionChains(page).move_to_element_with_offset(img, *start).click_and_hold() \
        .move_by_offset(*move).release().perform()
    # The displayed image is scaled (512 px shown at the stage's size): CSS px -> image px.
    assert abs(geo["width"] - geo["naturalWidth"]) > 20, "the image is not scaled: the test would prove less"
    sx, sy = geo["naturalWidth"] / geo["width"], geo["naturalHeight"] / geo["height"]
    css = [geo["width"] / 2 + start[0], geo["height"] / 2 + start[1],
           geo["width"] / 2 + start[0] + move[0], geo["height"] / 2 + start[1] + move[1]]
    want = [css[0] * sx, css[1] * sy, css[2] * sx, css[3] * sy]
    region_text = by_id(page, "region-text").text
    assert re.fullmatch(r"\d+,\d+,\d+,\d+", region_text), region_text
    got = [int(v) for v in region_text.split(",")]
    assert all(abs(g - w) <= 2 for g, w in zip(got, want)), (got, want)

    shown = rect_in_image(page, by_id(page, "region"))
    assert by_id(page, "region").is_displayed()
    for g, w in zip((shown["x1"], shown["y1"], shown["x2"], shown["y2"]), css):
        assert abs(g - w) <= 2, (shown, css)

    set_value(page, "max-tokens", "20")
    run(page)
    expected = generate_json("--image", str(CT), "--task", "identify", "--box", region_text,
                             "--max-new-tokens", "20")
    assert answer_text(page) == expected["text"]


def test_saved_answer_boxes_are_drawn_over_the_image(page, tmp_path):
    W, H = png_size(CT)
    boxes = [("nodule", [32, 46, 39, 55]), ("trachea", [49, 45, 55, 52])]
    answer = {
        "text": " ".join(f"<p>{label}</p> {{<{g[0]}><{g[1]}><{g[2]}><{g[3]}>}}" for label, g in boxes),
        "task": "detection", "instruction": "[detection] nodule", "stop_reason": "eos",
        "timings": {"tokens_per_s": 0.0}, "image": {"width": W, "height": H},
        "boxes": [{"label": label, "grid": g,
                   "pixels": [g[0] / 100 * W, g[1] / 100 * H, g[2] / 100 * W, g[3] / 100 * H]}
                  for label, g in boxes],
    }
    saved = tmp_path / "answer.json"
    saved.write_text(json.dumps(answer))
    upload(page, CT)
    by_id(page, "open-json").send_keys(str(saved))
    WebDriverWait(page, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlay .box")) == 2)
    assert answer_text(page) == answer["text"]

    def check_boxes():
        geo = image_geometry(page)
        for el, (label, g) in zip(page.find_elements(By.CSS_SELECTOR, "#overlay .box"), boxes):
            assert el.get_attribute("data-label") == label
            assert el.get_attribute("data-grid") == ",".join(map(str, g))
            assert label in el.text
            r = rect_in_image(page, el)
            want = [g[0] / 100 * geo["width"], g[1] / 100 * geo["height"],
                    g[2] / 100 * geo["width"], g[3] / 100 * geo["height"]]
            for got, w in zip((r["x1"], r["y1"], r["x2"], r["y2"]), want):
                assert abs(got - w) <= 1.5, (label, r, want)

    check_boxes()
    if os.environ.get("MINIGPT_MED_SCREENSHOT"):
        out = ROOT / "docs" / "img" / "viewer.png"
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out = tmp_path / "viewer.png"
    page.save_screenshot(str(out))
    assert png_size(out)[0] > 0

    # The boxes follow the image when the window (and so the displayed image) changes size.
    before = image_geometry(page)["width"]
    page.set_window_size(900, 700)
    WebDriverWait(page, 10).until(lambda d: abs(image_geometry(d)["width"] - before) > 20)
    check_boxes()


def test_dicom_is_rendered_with_its_window(page):
    choose(page, "window-preset", "lung")
    geo = upload(page, DICOM, window="lung")
    lung = DICOM.with_name("CT_small.lung.png")
    assert (geo["naturalWidth"], geo["naturalHeight"]) == png_size(lung)
    assert f"{geo['naturalWidth']} \u00d7 {geo['naturalHeight']}" in by_id(page, "image-info").text
    assert status(page)[0] != "error", status(page)
    pixels, want = gray_pixels(page), expected_gray(lung)
    assert max(abs(a - b) for a, b in zip(pixels, want)) <= 1 and len(pixels) == len(want)

    # Changing the preset renders again: no window is the file's own (min-max for this one).
    choose(page, "window-preset", "")
    WebDriverWait(page, RUN_TIMEOUT).until(
        lambda d: js(d, "return document.getElementById('image').dataset.window") == "auto")
    pixels, want = gray_pixels(page), expected_gray(DICOM.with_name("CT_small.png"))
    assert max(abs(a - b) for a, b in zip(pixels, want)) <= 1 and len(pixels) == len(want)

    # And the answer uses the chosen window, as the CLI's --window-preset does.
    choose(page, "window-preset", "lung")
    WebDriverWait(page, RUN_TIMEOUT).until(
        lambda d: js(d, "return document.getElementById('image').dataset.window") == "lung")
    choose(page, "task", "vqa")
    set_value(page, "prompt", "Is there a nodule?")
    set_value(page, "max-tokens", "20")
    run(page)
    expected = generate_json("--image", str(DICOM), "--window-preset", "lung", "--task", "vqa",
                             "--prompt", "Is there a nodule?", "--max-new-tokens", "20")
    assert answer_text(page) == expected["text"]


def test_errors_are_shown(page, tmp_path):
    # An image the server cannot read: the render's error message is shown, not a broken image.
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    by_id(page, "file").send_keys(str(junk))
    WebDriverWait(page, RUN_TIMEOUT).until(lambda d: status(d)[0] == "error")
    assert status(page)[1].startswith("image: ")
    # The same bytes to the chat route: its 400's error.message reaches the status line.
    choose(page, "task", "report")
    by_id(page, "run").click()
    WebDriverWait(page, RUN_TIMEOUT).until(lambda d: status(d)[0] in ("done", "error"))
    state, text = status(page)
    assert state == "error" and text.startswith("error: ") and len(text) > len("error: "), text
    assert not text.startswith("error: HTTP"), f"no error.message in the JSON body: {text}"
    assert by_id(page, "run").is_enabled()
    # The console's only complaints are the two refused requests (the page fixture checks the rest).
    logged = [e["message"] for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert all("status of 400" in m for m in logged), logged


def test_api_key_is_kept_and_sent(browser):
    with Server("--api-key", "viewer-test-key") as keyed:
        d = browser
        d.set_window_size(1280, 900)
        d.get(keyed.url + "/")  # the page itself needs no key
        set_value(d, "api-key", "viewer-test-key")
        d.refresh()
        WebDriverWait(d, 30).until(lambda d: js(d, "return document.readyState") == "complete")
        assert by_id(d, "api-key").get_attribute("value") == "viewer-test-key", "the key was not kept"
        d.get_log("browser")
        upload(d, CT)
        choose(d, "task", "vqa")
        set_value(d, "prompt", "Is there a nodule?")
        set_value(d, "max-tokens", "5")
        run(d)
        # Without the key the server refuses, and its message reaches the status line.
        by_id(d, "api-key").clear()
        by_id(d, "run").click()
        WebDriverWait(d, RUN_TIMEOUT).until(lambda d: status(d)[0] in ("done", "error"))
        state, text = status(d)
        assert state == "error" and not text.startswith("error: HTTP"), text
        logged = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert all("status of 401" in m for m in logged), logged
        assert js(d, "return localStorage.getItem('minigpt-med-api-key')") is None
