"""The HTML report: a self-contained folder, the settings diff, and a real browser loading it."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from kanitts.evaluation.html_report import build_report, differing_settings, flatten

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def report(evaluated_project):
    root, summary = evaluated_project
    return root / summary.report_index, summary


def test_report_folder_holds_everything_it_links(report):
    index, summary = report
    folder = index.parent
    page = index.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the report must not load anything remote"
    for name in ("report.css", "report.js"):
        assert (folder / name).is_file()
    links = re.findall(r"""(?:src|href)=['"]([^'"#]+)['"]""", page)
    for link in links:
        if not link.startswith("data:"):
            assert (folder / link).is_file(), link
    audio = re.findall(r"<audio[^>]*src='([^']+)'", page)
    assert len(audio) == len(summary.rows)
    assert {p.name for p in (folder / "plots").iterdir()} == {"all.png", "exp-a.png", "exp-b.png"}


def test_grid_columns_name_each_model_and_its_description(report):
    page = report[0].read_text(encoding="utf-8")
    assert "<th scope='col'>exp-a<span class='desc'>rank 8</span></th>" in page
    assert "<th scope='col'>exp-b<span class='desc'>rank 16</span></th>" in page


def test_settings_that_differ_are_highlighted(report):
    page = report[0].read_text(encoding="utf-8")
    highlighted = set(re.findall(r"<tr class='differs'><th scope='row'>([^<]+)</th>", page))
    assert {"experiment.lora_args.r", "experiment.trainer_args.learning_rate", "model_id"} <= highlighted
    assert "experiment.lora_args.target_modules" not in highlighted
    assert "experiment.lora_args.target_modules" in page


def test_differing_settings_counts_absent_keys_as_different():
    configs = {"a": {"x": {"y": 1, "z": [1, 2]}, "k": 1}, "b": {"x": {"y": 2, "z": [1, 2]}}}
    assert differing_settings(configs) == {"x.y", "k"}
    assert flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}


def test_report_is_rebuilt_atomically_from_results(report, tmp_path):
    index, summary = report
    results = index.parent.parent / summary.results_json
    rebuilt = build_report(results, tmp_path / "again")
    assert rebuilt.read_text(encoding="utf-8") == index.read_text(encoding="utf-8")
    assert not (tmp_path / "again.tmp").exists()


def test_report_leaves_matplotlib_as_the_caller_set_it(report, tmp_path):
    """The curves are drawn on their own Agg canvases: no backend switch, no pyplot figures left."""
    import sys

    import matplotlib

    index, summary = report
    backend = matplotlib.rcParams["backend"]
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    build_report(index.parent.parent / summary.results_json, tmp_path / "again")
    assert matplotlib.rcParams["backend"] == backend
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
    assert {p.name for p in (tmp_path / "again" / "plots").iterdir()} == {"all.png", "exp-a.png", "exp-b.png"}


def click(driver, element) -> None:
    """Scroll the element to the middle of the window (clear of the sticky header) and click it."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


@pytest.mark.browser
def test_report_plays_in_headless_chromium(report):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    index, summary = report
    profile = tempfile.mkdtemp(prefix="kanitts-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(index.resolve().as_uri())
        audios = driver.find_elements(By.TAG_NAME, "audio")
        assert len(audios) == len(summary.rows)
        assert driver.execute_script("return document.createElement('audio').canPlayType('audio/wav')") != ""
        deadline = time.time() + 30
        states = []
        while time.time() < deadline:
            states = driver.execute_script(
                "return Array.from(document.querySelectorAll('audio')).map(a => "
                "({src: a.currentSrc, ready: a.readyState, error: a.error && a.error.code, duration: a.duration}))"
            )
            if all(s["ready"] >= 1 or s["error"] for s in states):
                break
            time.sleep(0.2)
        for state in states:
            assert state["error"] is None, state
            assert state["ready"] >= 1 and state["src"].startswith("file://"), state
            assert state["duration"] == pytest.approx(3 * 1764 / 22050, abs=0.01)

        # Sorting by a column reorders the rows.
        table = driver.find_element(By.CSS_SELECTOR, "table.samples")
        header = table.find_elements(By.CSS_SELECTOR, "th[data-sort]")[0]
        click(driver, header)
        click(driver, header)  # descending by model id
        first = table.find_element(By.CSS_SELECTOR, "tbody tr td").text
        assert first == "exp-b"

        # A pick updates the summary and survives a reload (localStorage on file://).
        click(driver, driver.find_element(By.CSS_SELECTOR, "input[type=radio][value='exp-a#0']"))
        assert "exp-a: 1" in driver.find_element(By.ID, "pick-summary").text
        driver.refresh()
        assert "exp-a: 1" in driver.find_element(By.ID, "pick-summary").text

        severe = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert severe == [], severe
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_a_sample_without_audio_shows_why_instead_of_a_player(report, tmp_path):
    import json

    index, summary = report
    audio_dir = index.parent.parent / summary.results_json.parent
    results = json.loads((audio_dir / summary.results_json.name).read_text())
    results["rows"][0].update(duration_sec=0.0, problems="no audio frames generated")
    shutil.copytree(audio_dir, tmp_path / "audio", ignore=shutil.ignore_patterns("eval_dataset"))
    (tmp_path / "audio" / "eval_results.json").write_text(json.dumps(results))
    page = build_report(tmp_path / "audio" / "eval_results.json", tmp_path / "report").read_text()
    assert len(re.findall(r"<audio ", page)) == len(summary.rows) - 1
    assert "title='no audio frames generated'>no audio</span>" in page
