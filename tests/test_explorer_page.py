"""The explorer as a page: Voila serves notebooks/08_explorer.ipynb, headless Chromium (Debian's,
driven by Playwright) opens it, presses Complete and waits for the samples.

The page completes with the tiny checkpoint the tests train, unless IGPT_EXPLORER_MODEL names
another model. With IGPT_EXPLORER_SCREENSHOT=path the page is photographed after its completion
(`make explorer-screenshot` writes figures/explorer.png that way).
"""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("IGPT_CHROMIUM", "/usr/bin/chromium"))  # Debian's, where `make test` installs it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PAGE_TIMEOUT_MS = 240_000  # the page executes the notebook (imports torch, loads the model) before it shows

# Only this test needs a browser: where `make test` could not install one (no apt-get, not root and
# no sudo), it is skipped, before Voila starts, and says so.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no browser: {CHROMIUM} is missing (`make test` installs Debian's chromium with apt-get as root or "
           "with sudo, which this machine does not allow; IGPT_CHROMIUM may name another chromium)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page_model(request) -> str:
    chosen = os.environ.get("IGPT_EXPLORER_MODEL")
    return chosen or str(request.getfixturevalue("tiny_checkpoint"))


@pytest.fixture(scope="module")
def voila_url(page_model, mnist_root, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "IGPT_EXPLORER_MODEL": page_model}
    env.pop("IGPT_SMOKE", None)  # the page is what a user opens, not the notebook's smoke test
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "voila", "notebooks/08_explorer.ipynb", f"--port={port}", "--Voila.ip=127.0.0.1",
             "--no-browser", "--show_tracebacks=True"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Voila did not start on port {port}:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_the_page_completes_a_digit_and_survives_a_bad_upload(voila_url, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(voila_url, timeout=PAGE_TIMEOUT_MS)
    complete = page.get_by_role("button", name="Complete")
    complete.wait_for(timeout=PAGE_TIMEOUT_MS)

    # A bad upload, picked in the browser's file dialog: a clear message, nothing drawn.
    with page.expect_file_chooser() as dialog:
        page.locator(".widget-upload").click()
    dialog.value.set_files(files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"these are notes, not a picture"}])
    expect(page.get_by_role("button", name="upload", exact=True)).to_have_class(re.compile("mod-active"), timeout=30_000)
    complete.click()
    expect(page.get_by_text("notes.png: not an image (expected a PNG, JPG or JPEG file)")).to_be_visible(timeout=60_000)
    expect(page.locator("img.igpt-sample")).to_have_count(0)

    # Then a test digit: the samples appear, drawn, beside the cut input and the original.
    page.get_by_role("button", name="test image", exact=True).click()
    complete.click()
    expect(page.get_by_text(re.compile(r"done: 8 samples in"))).to_be_visible(timeout=120_000)
    expect(page.locator("img.igpt-sample")).to_have_count(8)
    expect(page.locator("img.igpt-input")).to_have_count(1)
    expect(page.locator("img.igpt-original")).to_have_count(1)
    expect(page.get_by_text("not an image")).to_have_count(0)
    sizes = page.locator("img.igpt-sample").evaluate_all("images => images.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[112, 112]] * 8
    expect(page.get_by_text("mnist test image 0 (label 7)", exact=False)).to_be_visible()

    screenshot = os.environ.get("IGPT_EXPLORER_SCREENSHOT")
    if screenshot:
        page.screenshot(path=str(REPO / screenshot), full_page=True)
    page.close()
