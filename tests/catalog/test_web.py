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
from vlforge.catalog.web import make_server, training_curves

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


def test_dataset_card_is_rendered_markdown_with_raw_html_as_text(served: tuple[str, dict]) -> None:
    base, arts = served
    page = _get(f"{base}/a/{arts['dataset'].id}")[2].decode()
    card = page[page.index('<div id="card">'):page.index("<h2>Metrics</h2>")]
    assert "<pre id=\"card\">" not in page and "<h1>Dataset card: shapes-mini</h1>" in card
    assert "<h2>Splits</h2>" in card and "<li><strong>train</strong>: 1 sample</li>" in card
    assert "<th>split</th>" in card and "<td>train</td>" in card
    assert "<pre><code>vlforge run ingest --source builtin:shapes?n=2" in card
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in card and "<script>" not in card
    assert "javascript:" not in card and '<a href="https://example.org/docs">the docs</a>' in card


def test_index_shows_an_evals_headline_beside_its_baseline(served: tuple[str, dict]) -> None:
    base, arts = served
    page = _get(f"{base}/?kind=eval")[2].decode()
    row = page[page.index(f'href="/a/{arts["eval"].id}"'):]
    row = row[:row.index("</tr>")]
    # retrieval's headline is i2t_r1 (TaskSpec.headline); the baseline_* keys, which sort first, are not shown
    assert "i2t_r1=0.5 (untrained 0.125)" in row and "baseline_" not in row and "t2i_r1" not in row
    page = _get(f"{base}/?kind=model")[2].decode()
    assert "final_loss=0.5, i2t_r1=0.5" in page


def test_model_page_shows_training_plot_curves_and_its_evaluations(served: tuple[str, dict]) -> None:
    base, arts = served
    page = _get(f"{base}/a/{arts['model'].id}")[2].decode()
    training = page[page.index('<div id="training">'):page.index("<h2>Lineage</h2>")]
    assert f'src="/file/{arts["model"].id}/loss.png"' in training
    assert [part.split('"')[0] for part in training.split('data-series="')[1:]] == ["loss", "val_loss",
                                                                                   "val_zs_top1"]
    val_loss = training[training.index('data-series="val_loss"'):]
    points = val_loss[val_loss.index('points="') + 8:].split('"')[0].split()
    assert len(points) == 2 and float(points[0].split(",")[1]) < float(points[1].split(",")[1])  # falls: y grows down
    assert "<table id='evaluations'>" in training and f'href="/a/{arts["eval"].id}"' in training
    assert "i2t_r1=0.5 (untrained 0.125)" in training
    first = _get(f"{base}/a/{arts['model1'].id}")[2].decode()
    assert 'data-series="loss"' in first and "No validation curves" in first and "evaluations" not in first


def test_leaderboard_page_and_chart_are_served(served: tuple[str, dict], tmp_path: Path) -> None:
    base, arts = served
    status, _h, body = _get(f"{base}/leaderboard")
    page = body.decode()
    assert status == 200 and "<table id='leaderboard'>" in page and '<a href="/leaderboard">' in page
    row = page[page.index(f'href="/a/{arts["model"].id}"'):]
    row = row[:row.index("</tr>")]
    assert "<td>retrieval</td><td>i2t_r1</td><td>0.5000</td><td>0.1250</td>" in row
    assert f'href="/a/{arts["eval"].id}"' in row and 'src="/leaderboard/chart.png"' in page
    status, headers, png = _get(f"{base}/leaderboard/chart.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    from PIL import Image

    (tmp_path / "chart.png").write_bytes(png)
    assert Image.open(tmp_path / "chart.png").size[0] >= 300


def test_leaderboard_without_evals_says_so(tmp_path: Path) -> None:
    server = make_server(Catalog(tmp_path / "catalog"), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert "No eval reports yet" in _get(f"{base}/leaderboard")[2].decode()
        assert _get(f"{base}/leaderboard/chart.png")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_training_curves_read_loss_and_val_series_and_skip_bad_lines() -> None:
    log = ('{"step": 1, "loss": 2.0, "lr": 0.1}\nnot json\n[1]\n{"step": 2, "loss": 1.5, "val_acc": 0.4, "val_x": "a"}\n'
           '{"step": 3, "loss": NaN, "val_acc": Infinity}\n')
    assert training_curves(log) == {"loss": [(1.0, 2.0), (2.0, 1.5)], "val_acc": [(2.0, 0.4)]}


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
        card = driver.find_element(By.ID, "card")
        assert XSS in card.text and card.find_element(By.TAG_NAME, "h1").text == "Dataset card: shapes-mini"
        assert driver.execute_script("return window.__xss === undefined")
        assert driver.execute_script("return document.querySelectorAll('body script').length") == 0
        down = driver.find_element(By.ID, "descendants").text
        assert "clip-shapes-mini-eval:1" in down and "shapes-mini-tokenizer:1" in down
        driver.find_element(By.CSS_SELECTOR, 'nav a[href="/leaderboard"]').click()
        assert driver.find_element(By.ID, "leaderboard").text.count("retrieval") == 1
        assert driver.execute_script("return document.getElementById('leaderboard-chart').naturalWidth") >= 300
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
