"""The read-only catalog browser (vlforge.catalog.web): pages over HTTP, escaping, file serving without traversal,
and (slow) a real headless Chromium clicking through index -> search -> model -> lineage -> dataset."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from catalog_seed import XSS, seed_lineage
from vlforge.catalog import Catalog
from vlforge.catalog.web import make_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict]]:
    catalog = Catalog(tmp_path / "catalog")
    arts = seed_lineage(catalog, tmp_path / "work")
    server = make_server(catalog, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", arts
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_pages_escape_everything_and_link_lineage(served: tuple[str, dict]) -> None:
    base, arts = served
    status, headers, body = _get(f"{base}/?q=shapes&kind=model")
    page = body.decode()
    assert status == 200 and "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert page.count('class="artifact-link"') == 2 and "2 artifact(s)" in page

    status, _h, body = _get(f"{base}/a/{arts['dataset'].id}")
    page = body.decode()
    assert status == 200
    assert "<script>" not in page and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") >= 3  # caption, card and config
    assert f'href="/a/{arts["tokenizer"].id}"' in page and f'href="/a/{arts["eval"].id}"' in page

    status, _h, body = _get(f"{base}/a/{arts['model'].id}")
    page = body.decode()
    assert f'src="/file/{arts["model"].id}/loss.png"' in page
    assert f'href="/a/{arts["dataset"].id}"' in page and arts["model"].files[0].sha256 in page
    assert f'/compare?id={arts["model"].id}&amp;id={arts["model1"].id}' in page

    status, _h, body = _get(f"{base}/compare?id={arts['model1'].id}&id=clip-shapes-mini:2")
    assert status == 200 and "config values.lr *" in body.decode()


def test_files_are_served_read_only_with_types_and_no_traversal(served: tuple[str, dict]) -> None:
    base, arts = served
    model = arts["model"].id
    status, headers, body = _get(f"{base}/file/{model}/loss.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    status, headers, _body = _get(f"{base}/file/{model}/config.json")
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, headers, body = _get(f"{base}/file/{arts['dataset'].id}/README.md")
    assert status == 200 and headers["Content-Type"].startswith("text/markdown") and XSS.encode() in body
    for bad in (f"/file/{model}/../../index.sqlite", f"/file/{model}/%2e%2e/%2e%2e/index.sqlite",
                f"/file/{model}//etc/passwd", "/a/../../etc/passwd", f"/a/{'0' * 64}", "/nope"):
        assert _get(base + bad)[0] == 404, bad
    request = urllib.request.Request(f"{base}/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=30)
    assert excinfo.value.code == 405


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.mark.slow
def test_real_browser_walks_index_model_lineage_dataset(tmp_path: Path, home: Path) -> None:
    # Installed by `make install` (Debian's chromium + chromium-driver); fail loudly rather than skip.
    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), \
        "chromium/chromium-driver missing: run `make browser` (apt-get install -y chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    catalog = Catalog(home / "catalog")
    arts = seed_lineage(catalog, tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"VLFORGE_HOME": str(home)}
    server = subprocess.Popen([sys.executable, "-m", "vlforge.cli", "catalog", "serve", "--port", "0"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    profile = tmp_path / "chromium-profile"
    driver = None
    try:
        line = server.stdout.readline()
        assert line.startswith("serving the catalog on http://127.0.0.1:"), (line, server.stderr.read()
                                                                             if server.poll() is not None else "")
        base = line.split(" on ", 1)[1].strip().rstrip("/")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile}", "--window-size=1280,1600"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
        driver.set_page_load_timeout(60)

        driver.get(base + "/")
        assert len(driver.find_elements(By.CSS_SELECTOR, "a.artifact-link")) == 5
        box = driver.find_element(By.ID, "q")
        box.send_keys("clip-shapes-mini")
        driver.find_element(By.CSS_SELECTOR, "#search button").click()
        links = driver.find_elements(By.CSS_SELECTOR, 'a.artifact-link[data-kind="model"]')
        assert [link.text for link in links] == ["clip-shapes-mini:2", "clip-shapes-mini:1"]
        assert "3 artifact(s)" in driver.find_element(By.ID, "count").text  # two models and the eval
        links[0].click()
        assert driver.find_element(By.ID, "artifact-id").text == arts["model"].id
        assert "loss.png" in driver.find_element(By.TAG_NAME, "figure").text
        assert driver.execute_script("return document.querySelector('img.plot').naturalWidth") == 8
        driver.find_element(By.CSS_SELECTOR, f'#ancestors a[href="/a/{arts["dataset"].id}"]').click()
        assert driver.title == "dataset shapes-mini:1"
        samples = driver.find_element(By.ID, "samples").text
        assert f"a red square {XSS}" in samples  # the caption's <script> is text, not markup
        assert XSS in driver.find_element(By.ID, "card").text
        assert driver.execute_script("return window.__xss === undefined")
        assert driver.execute_script("return document.querySelectorAll('body script').length") == 0
        down = driver.find_element(By.ID, "descendants").text
        assert "clip-shapes-mini-eval:1" in down and "shapes-mini-tokenizer:1" in down
        shot = tmp_path / "catalog-browser.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        print(f"screenshot: {shot}")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
