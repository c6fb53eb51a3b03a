"""The demo page (examples/app.py) in a real browser: the app serves on 127.0.0.1, Debian's headless Chromium
(driven by Selenium) uploads a digit, presses Certify and reads the certified class and radius from the page,
which must be the pipeline's answer for that file with the page's settings.

Skipped, with the reason, where gradio, selenium or Chromium is missing (`pip install -e ".[test,demo]"`,
`apt-get install -y chromium chromium-driver`; .ci/run installs them).

`python tests/test_demo_app.py --model runs/embedded/vit-lora-0.25 --screenshot benchmarks/results/demo_app.png`
takes the README's screenshot of the page on the main job's model the same way.
"""

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
APP = os.path.join(ROOT, "examples", "app.py")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PAGE = {"n": 10_000, "seed": 0}  # the page's defaults (slider, seed box)
CERTIFIED = re.compile(r"Certified class: (?P<label>\S+) \| radius (?P<radius>[0-9.]+) \(l2, \[0, 1\] pixels\)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(model: str, *extra: str, timeout: float = 300):
    """examples/app.py serving ``model`` on 127.0.0.1; yields its URL once it answers, stops it after."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    app = subprocess.Popen([sys.executable, APP, "--model", model, "--host", "127.0.0.1", "--port", str(port), *extra],
                           env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if app.poll() is not None:
                raise RuntimeError(f"examples/app.py exited with {app.returncode}:\n{app.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"examples/app.py did not answer at {url} within {timeout:.0f} s") from None
                time.sleep(1)
        yield url
    finally:
        app.terminate()
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()


def certify_in_browser(url: str, image_path: str, screenshot: str, epsilon: float = 0, timeout: float = 300) -> str:
    """Open the page in headless Chromium, upload ``image_path``, set the attack radius ``epsilon``, press Certify,
    wait for the certificate and the noisy copies (and the attacked image's certificate), save a screenshot;
    return the certificate's text."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(os.path.abspath(image_path))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # the upload is shown
        if epsilon:
            box = driver.find_element(By.CSS_SELECTOR, "#epsilon input[type=number]")
            box.clear()
            box.send_keys(f"{epsilon:g}", Keys.TAB)
        driver.find_element(By.CSS_SELECTOR, "#certify").click()
        text = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#certificate textarea").get_attribute("value"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#noisy img")) > 0)
        if epsilon:
            attacked = "#attacked-certificate textarea"
            wait.until(lambda d: "SmoothAdv" in d.find_element(By.CSS_SELECTOR, attacked).get_attribute("value"))
        time.sleep(1)  # let the bar chart draw
        driver.save_screenshot(screenshot)
        return text
    finally:
        driver.quit()


def save_digit(path: str, index: int = 0) -> int:
    """Save held-out MNIST digit ``index`` (embedded, no network) as a PNG; its label."""
    from smoothing_hf.data import load_image_dataset

    example = load_image_dataset("embedded:mnist")["validation"][index]
    example["image"].save(path)
    return example["label"]


def test_the_page_certifies_an_uploaded_digit_in_chromium(tiny_vit_gray_dir, tmp_path):
    pytest.importorskip("gradio", reason='the demo needs gradio: pip install -e ".[demo]"')
    pytest.importorskip("selenium", reason='the browser test needs selenium: pip install -e ".[test]"')
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's headless Chromium is not installed: apt-get install -y chromium chromium-driver")
    from transformers import pipeline

    from smoothing_hf import SmoothedImageClassifier

    folder = str(tmp_path / "model")
    SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, method="lora").save_pretrained(folder)
    digit = str(tmp_path / "digit.png")
    save_digit(digit)
    screenshot = str(tmp_path / "page.png")
    with running_app(folder, "--examples_dataset", "none") as url:
        text = certify_in_browser(url, digit, screenshot)

    # The page shows what the pipeline answers for that file with the page's settings.
    expected = pipeline("certified-image-classification", model=folder, device="cpu")(
        digit, n0=100, alpha=0.001, batch_size=1000, **PAGE)
    assert not expected["abstain"]
    found = CERTIFIED.match(text)
    assert found, text
    assert found["label"] == expected["label"]
    assert float(found["radius"]) == pytest.approx(expected["certified_radius"], abs=5e-4)
    with open(screenshot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Screenshot the demo page certifying a held-out digit.")
    parser.add_argument("--model", required=True, help="a smoothing folder or Hub id")
    parser.add_argument("--screenshot", required=True, help="where to write the PNG")
    parser.add_argument("--digit", type=int, default=0, help="which held-out embedded MNIST digit to upload")
    parser.add_argument("--epsilon", type=float, default=0.5, help="the SmoothAdv attack radius to set (0: none)")
    arguments = parser.parse_args()
    digit_path = os.path.join(os.path.dirname(os.path.abspath(arguments.screenshot)), ".demo-digit.png")
    label = save_digit(digit_path, arguments.digit)
    try:
        with running_app(arguments.model) as url:
            shown = certify_in_browser(url, digit_path, arguments.screenshot, arguments.epsilon)
        print(f"digit {arguments.digit} (label {label}): {shown}")
    finally:
        os.remove(digit_path)
