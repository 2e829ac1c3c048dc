"""Headless Chromium (Debian's `chromium` + `chromium-driver`, installed by .ci/run) driven by selenium: open a page,
report what rendered and what the console said. No network: every background service of the browser is off."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]

# Everything a page must satisfy, measured in the page: every figure decoded with a size and laid out visibly.
PLOT_STATE = """
return Array.from(document.querySelectorAll('img.plot')).map(img => {
  const r = img.getBoundingClientRect();
  return {id: img.closest('figure') ? img.closest('figure').id : '', complete: img.complete,
          natural: [img.naturalWidth, img.naturalHeight], shown: [r.width, r.height]};
});
"""


def require_browser() -> None:
    """CI (.ci/run sets ARCHSPACE_REQUIRE_BROWSER=1) fails without a browser; elsewhere the test is skipped."""
    if CHROMIUM and CHROMEDRIVER:
        return
    msg = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("ARCHSPACE_REQUIRE_BROWSER") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def render(path: Path) -> tuple[list[dict], list[dict], str]:
    """Open a local page; return (the figures' state, the browser console's entries, the page title)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_browser()
    profile = tempfile.mkdtemp(prefix="archspace-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(path).absolute().as_uri())
        state = driver.execute_script(PLOT_STATE)
        console = driver.get_log("browser")
        return state, console, driver.title
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
