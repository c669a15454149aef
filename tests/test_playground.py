"""The playground at `GET /` (CONTRACT 10), driven in a real headless browser: Debian's chromium
through its chromedriver, with selenium, against a real stack (API and worker subprocesses, Redis,
`tiny` on the CPU). The page is driven the way the contract promises anyone can: by the `name`
attributes of its controls, its `type="submit"` button, `<img>` inside `#outputs` and `role="alert"`.

Set PLAYGROUND_SCREENSHOTS_DIR=docs to refresh docs/playground-desktop.png and -phone.png.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.core.request_model import Img2ImgRequest
from app.core.scheduler_names import SCHEDULER_NAMES
from tests.conftest import REPO_ROOT
from tests.stack import start_full_stack


def installed(*candidates: str | None) -> str | None:
    return next((path for path in candidates if path and Path(path).exists()), None)


CHROMIUM = installed("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
CHROMEDRIVER = installed("/usr/bin/chromedriver", shutil.which("chromedriver"))
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
    ),
]

STATIC = REPO_ROOT / "app" / "api" / "static" / "playground"
DESKTOP = (1280, 900)
PHONE = (390, 844)
WRONG_KEY = "SG_" + "0" * 32
UNAUTHORIZED = "401: Unauthorized. API key is invalid or may have expired"


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(stack) -> str:
    return stack.create_key(name="playground")


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, stack, key):
    """The playground, freshly loaded at desktop size, with the key typed in."""
    viewport(browser, *DESKTOP)
    browser.get(stack.base_url + "/")
    wait_until(browser, lambda d: "tiny" in option_values(d, "base_model"), "the model list")
    set_field(browser, "api_key", key)
    yield browser
    browser.execute_script("localStorage.clear()")


@pytest.fixture
def input_png(tmp_path) -> Path:
    path = tmp_path / "in.png"
    striped_image(128, 96).save(path, "PNG")
    return path


# ---- helpers -------------------------------------------------------------------------------------


def striped_image(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "teal")
    for x in range(0, width, 16):
        image.paste("orange", (x, 0, x + 8, height))
    return image


def viewport(driver, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def wait_until(driver, predicate, what: str, timeout: float = 90):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except Exception as exc:
        raise AssertionError(
            f"timed out waiting for {what}; status: {text_of(driver, 'status')!r}, "
            f"alert: {alert_text(driver)!r}"
        ) from exc


def field(driver, name: str):
    return driver.find_element(By.NAME, name)


def set_field(driver, name: str, value: str) -> None:
    element = field(driver, name)
    element.clear()
    element.send_keys(value)


def choose(driver, name: str, value: str) -> None:
    Select(field(driver, name)).select_by_value(value)


def option_values(driver, name: str) -> list[str]:
    return [o.get_attribute("value") for o in Select(field(driver, name)).options]


def text_of(driver, element_id: str) -> str:
    try:
        return driver.find_element(By.ID, element_id).get_attribute("textContent").strip()
    except WebDriverException:
        return ""


def alert_text(driver) -> str:
    try:
        return driver.find_element(By.CSS_SELECTOR, '[role="alert"]').get_attribute("textContent").strip()
    except WebDriverException:
        return ""


def fill_fast_request(driver, image: Path | None = None, **fields: str) -> None:
    if image is not None:
        field(driver, "image").send_keys(str(image))  # the first control named image: the file input
    values = {"prompt": "a watercolour lighthouse", "num_inference_steps": "20", "strength": "0.5", **fields}
    for name, value in values.items():
        if name in ("base_model", "scheduler", "output_format"):
            choose(driver, name, value)
        else:
            set_field(driver, name, value)


def submit(driver) -> None:
    driver.find_element(By.CSS_SELECTOR, 'form button[type="submit"]').click()


LOADED = "return arguments[0].complete && arguments[0].naturalWidth > 0"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def wait_for_outputs(driver, count: int = 1) -> list:
    def loaded(d):
        images = d.find_elements(By.CSS_SELECTOR, "#outputs img")
        ready = len(images) == count and all(d.execute_script(LOADED, i) for i in images)
        return images if ready else False

    return wait_until(driver, loaded, "the outputs to show")


def request_id(driver) -> str:
    match = UUID.search(text_of(driver, "facts"))
    assert match, text_of(driver, "facts")
    return match.group(0)


def copied(driver, button_id: str) -> str:
    driver.find_element(By.ID, button_id).click()
    wait_until(driver, lambda d: text_of(d, "copy_status"), "the code to be copied")
    return driver.find_element(By.ID, "snippet").get_attribute("textContent")


def run_snippet(command: list[str], cwd: Path, key: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, "SDXL_API_KEY": key}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def screenshot(driver, path: Path, width: int, height: int) -> None:
    viewport(driver, width, height, mobile=width < 600)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)  # one layout pass after the resize
    driver.save_screenshot(str(path))
    with Image.open(path) as shot:
        assert shot.size == (width, height)
    docs = os.environ.get("PLAYGROUND_SCREENSHOTS_DIR")
    if docs:
        target = REPO_ROOT / docs / f"playground-{'phone' if width < 600 else 'desktop'}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as shot:
            # An adaptive palette keeps a UI screenshot a fraction of its RGB size.
            palette = shot.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
            palette.save(target, optimize=True)


# ---- the static page, without a browser ----------------------------------------------------------


class Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, list[dict[str, str | None]]] = {}
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("input", "select", "textarea") and attributes.get("name"):
            self.controls.setdefault(attributes["name"], []).append({"tag": tag, **attributes})
        if tag == "select":
            self._select = attributes.get("name")
        if tag == "option" and self._select:
            self.options.setdefault(self._select, [])

    def handle_data(self, data):
        if self._select and self.lasttag == "option" and data.strip():
            self.options.setdefault(self._select, []).append(data.strip())

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


def test_every_field_has_a_control_named_as_the_contract_with_its_range_and_default():
    parser = Controls()
    parser.feed((STATIC / "index.html").read_text())
    controls = parser.controls
    assert set(controls) == set(Img2ImgRequest.model_fields) | {"api_key"}
    # the file input first (what a driver finds by name), then the URL box
    assert [(c["tag"], c.get("type")) for c in controls["image"]] == [("input", "file"), ("textarea", None)]
    assert controls["api_key"][0]["type"] == "password" and "value" not in controls["api_key"][0]
    for name, info in Img2ImgRequest.model_fields.items():
        control = controls[name][0]
        bounds = {type(m).__name__: m for m in info.metadata}
        if "Ge" in bounds and name != "seed":
            assert float(control["min"]) == bounds["Ge"].ge, name
            assert float(control["max"]) == bounds["Le"].le, name
        if control.get("type") == "number" or name == "seed":
            assert float(control["value"]) == info.default, name
    assert parser.options["output_format"] == ["jpeg", "png", "webp"]
    assert parser.options["scheduler"] == ["UniPC"]  # the rest come from the server


def test_the_page_and_its_files_are_served_with_a_strict_policy(stack):
    page = httpx.get(stack.base_url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "an asset from another host"
    for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        response = httpx.get(f"{stack.base_url}/playground/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert response.content == (STATIC / name).read_bytes()
    missing = httpx.get(f"{stack.base_url}/playground/..%2Fpyproject.toml", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    config = httpx.get(f"{stack.base_url}/playground/config.json", timeout=10).json()
    assert config["schedulers"] == list(SCHEDULER_NAMES) and len(config["schedulers"]) == 30
    assert {"juggernaut", "realvis", "protovision", "yamers_realistic", "tiny"} <= {
        m["name"] for m in config["models"]
    }
    assert config["default_base_model"] == "tiny" and config["default_scheduler"] == "UniPC"


# ---- in the browser ------------------------------------------------------------------------------


def test_upload_generate_show_seed_and_copied_code_give_same_bytes(page, stack, key, input_png, tmp_path):
    assert option_values(page, "scheduler") == list(SCHEDULER_NAMES)
    assert Select(field(page, "scheduler")).first_selected_option.get_attribute("value") == "UniPC"
    assert Select(field(page, "base_model")).first_selected_option.get_attribute("value") == "tiny"
    assert field(page, "seed").get_attribute("value") == "-1"

    fill_fast_request(page, image=input_png)
    submit(page)
    [image] = wait_for_outputs(page)

    rid = request_id(page)
    result = httpx.get(f"{stack.base_url}/v2/requests/{rid}", headers={"x-api-key": key}, timeout=10).json()
    assert result["status"] == "COMPLETED"
    seed = result["seeds"][0]
    assert image.get_attribute("data-seed") == str(seed)
    assert f"seed {seed}" in text_of(page, "outputs")
    assert f"{seed} (drawn by the server)" in text_of(page, "facts")
    assert image.get_attribute("src") == result["output"]
    link = page.find_element(By.CSS_SELECTOR, "#outputs a[download]")
    assert link.get_attribute("href") == result["output"]
    assert link.get_attribute("download") == result["images"][0]["file_name"]
    shown = httpx.get(image.get_attribute("src"), timeout=10).content
    assert Image.open(io.BytesIO(shown)).size == (128, 96)
    assert alert_text(page) == ""
    assert "Completed" in text_of(page, "status")

    # copy as curl: the same file, fields and drawn seed, through v1; the same bytes come back
    curl = copied(page, "copy_curl")
    assert f"seed={seed}" in curl and "image=@in.png" in curl and key not in curl
    run_snippet(["bash", "-c", curl], tmp_path, key)
    assert (tmp_path / "output.jpg").read_bytes() == shown

    # copy as segmind SDK: the real SDK, run as copied, through v2
    sdk = copied(page, "copy_sdk")
    assert f"seed={seed}," in sdk and key not in sdk
    (tmp_path / "snippet.py").write_text(sdk)
    printed = run_snippet([sys.executable, "snippet.py"], tmp_path, key).stdout.split()
    assert printed[0] == f"[{seed}]"
    assert httpx.get(printed[-1], timeout=10).content == shown

    screenshot(page, tmp_path / "desktop.png", *DESKTOP)
    screenshot(page, tmp_path / "phone.png", *PHONE)
    assert page.execute_script("return document.documentElement.scrollWidth") <= PHONE[0], "sideways scroll"


def test_keyboard_alone_with_a_pasted_data_url(page, stack, key, tmp_path):
    buffer = io.BytesIO()
    striped_image(64, 64).save(buffer, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    page.refresh()  # a fresh page: the first Tab goes to its first control; the key comes back
    wait_until(page, lambda d: "tiny" in option_values(d, "base_model"), "the model list")
    assert field(page, "api_key").get_attribute("value") == key
    keys = ActionChains(page)
    order: list[str] = []
    typed = {
        "image_url": data_url,
        "num_inference_steps": "20",
        "strength": "0.5",
        "seed": "1234567890123456789",  # above 2^53: kept exact
        "samples": "2",
    }
    for _ in range(40):
        keys.send_keys(Keys.TAB).perform()
        active = page.switch_to.active_element
        element_id = active.get_attribute("id") or active.tag_name
        order.append(element_id)
        style = page.execute_script("return getComputedStyle(arguments[0]).outlineStyle", active)
        assert style not in ("none", ""), f"no visible focus on {element_id}"
        if element_id in typed:
            keys.key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
            keys.send_keys(typed[element_id]).perform()
        if element_id == "submit":
            keys.send_keys(Keys.ENTER).perform()
            break
    expected = [
        "api_key", "forget_key", "image_file", "image_url", "prompt", "negative_prompt", "base_model",
        "scheduler", "num_inference_steps", "guidance_scale", "strength", "samples", "seed",
        "output_format", "summary", "submit",
    ]  # fmt: skip
    assert [e for e in order if e != "a"] == expected, order  # "a": the skip link, first

    images = wait_for_outputs(page, count=2)
    assert [i.get_attribute("data-seed") for i in images] == ["1234567890123456789", "1234567890123456790"]
    for image in images:
        shown = httpx.get(image.get_attribute("src"), timeout=10).content
        assert Image.open(io.BytesIO(shown)).size == (64, 64)

    # the copy button, reached and pressed from the keyboard; the JSON body goes through a here-document
    for _ in range(30):
        if page.switch_to.active_element.get_attribute("id") == "copy_curl":
            break
        keys.send_keys(Keys.TAB).perform()
    keys.send_keys(Keys.ENTER).perform()
    wait_until(page, lambda d: text_of(d, "copy_status"), "the code to be copied")
    curl = page.find_element(By.ID, "snippet").get_attribute("textContent")
    assert '"seed": 1234567890123456789' in curl and data_url in curl
    run_snippet(["bash", "-c", curl], tmp_path, key)
    first = httpx.get(images[0].get_attribute("src"), timeout=10).content
    assert (tmp_path / "output.jpg").read_bytes() == first


def test_cancel_a_request_while_it_is_processing(page, stack, key, tmp_path):
    big = tmp_path / "big.png"  # 512x512, 100 steps at strength 1: tens of seconds of work on a CPU
    striped_image(512, 512).save(big, "PNG")
    fill_fast_request(page, image=big, num_inference_steps="100", strength="1")
    submit(page)
    wait_until(page, lambda d: text_of(d, "status").startswith("Processing, step"), "processing", timeout=60)
    rid = request_id(page)
    page.find_element(By.ID, "cancel").click()
    wait_until(page, lambda d: text_of(d, "status").startswith("Cancelled"), "the cancellation")
    status = httpx.get(f"{stack.base_url}/v2/requests/{rid}/status", headers={"x-api-key": key}, timeout=10)
    assert status.status_code == 422 and status.json()["error"] == "cancelled"
    # The page followed the request on its event stream (SSE), not by polling the status.
    metrics = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    events_route = 'route="/v2/requests/{request_id}/events",status="200"'
    assert f'sdxl_http_requests_total{{method="GET",{events_route}}}' in metrics
    assert page.find_elements(By.CSS_SELECTOR, "#outputs img") == []
    assert alert_text(page) == ""
    assert page.find_element(By.CSS_SELECTOR, 'button[type="submit"]').is_enabled()
    assert not page.find_element(By.ID, "cancel").is_enabled()


def test_cancel_a_queued_request(page, stack, key, input_png):
    # `idle` is a model no worker serves: the request waits QUEUED until it is cancelled.
    fill_fast_request(page, image=input_png, base_model="idle")
    submit(page)
    wait_until(page, lambda d: text_of(d, "status").startswith("Queued, next in line"), "the queue position")
    rid = request_id(page)
    page.find_element(By.ID, "cancel").click()
    wait_until(page, lambda d: text_of(d, "status").startswith("Cancelled"), "the cancellation")
    status = httpx.get(f"{stack.base_url}/v2/requests/{rid}/status", headers={"x-api-key": key}, timeout=10)
    assert status.json()["error"] == "cancelled"


def test_wrong_key_is_401_as_the_api_words_it_and_the_key_stays_in_the_browser(page, stack, input_png):
    set_field(page, "api_key", WRONG_KEY)
    fill_fast_request(page, image=input_png)
    submit(page)
    wait_until(page, lambda d: alert_text(d), "the error")
    assert alert_text(page) == UNAUTHORIZED
    assert page.find_elements(By.CSS_SELECTOR, "#outputs img") == []
    # the key lives in localStorage and comes back on reload; the page itself never carries it
    assert page.execute_script("return localStorage.getItem('sdxl-img2img.api_key')") == WRONG_KEY
    page.refresh()
    wait_until(page, lambda d: field(d, "api_key").get_attribute("value") == WRONG_KEY, "the key restored")
    for path in ("/", "/playground/playground.js", "/playground/config.json"):
        assert WRONG_KEY not in httpx.get(stack.base_url + path, timeout=10).text
    page.find_element(By.ID, "forget_key").click()
    assert page.execute_script("return localStorage.getItem('sdxl-img2img.api_key')") is None


@pytest.mark.parametrize(
    ("key_options", "fields", "expected"),
    [
        ({"models": ["juggernaut"]}, {}, r"^403: .*tiny"),
        ({"credits": 0}, {}, r"^406: "),
        ({}, {"base_model": "broken"}, r"^FAILED: .+"),
        ({"rpm": 1}, {"base_model": "idle"}, r"^429: .* \(retry after \d+ s\)$"),
    ],
    ids=["403", "406", "failed", "429"],
)
def test_errors_are_shown_as_the_api_words_them(page, stack, input_png, key_options, fields, expected):
    set_field(page, "api_key", stack.create_key(name="errors", **key_options))
    fill_fast_request(page, image=input_png, **fields)
    if "rpm" in key_options:  # the first submission takes the minute's only slot; cancel it
        submit(page)
        wait_until(page, lambda d: text_of(d, "status").startswith("Queued"), "the first request")
        page.find_element(By.ID, "cancel").click()
        wait_until(page, lambda d: text_of(d, "status").startswith("Cancelled"), "the cancellation")
    submit(page)
    wait_until(page, lambda d: alert_text(d), "the error")
    assert re.search(expected, alert_text(page)), alert_text(page)
    assert page.find_elements(By.CSS_SELECTOR, "#outputs img") == []


def test_bad_values_are_named_in_the_page_and_by_the_server(page, stack):
    page.find_element(By.CSS_SELECTOR, 'textarea[name="image"]').send_keys("data:image/png;base64,AAAA")
    set_field(page, "num_inference_steps", "19")
    submit(page)
    wait_until(page, lambda d: alert_text(d), "the error")
    assert alert_text(page) == "num_inference_steps must be between 20 and 100, got 19"
    assert page.switch_to.active_element.get_attribute("name") == "num_inference_steps"
    set_field(page, "num_inference_steps", "20")
    submit(page)
    wait_until(page, lambda d: alert_text(d).startswith("400: "), "the server's 400")
    assert "image" in alert_text(page)
