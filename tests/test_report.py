"""The HTML report: the data in the page, the folder's files, and every control in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
import wave
from pathlib import Path

import pytest

from kanitts.errors import UserError
from kanitts.evaluation.html_report import DATA_ELEMENT_ID, build_report, differing_settings, embed_json, flatten
from kanitts.evaluation.metrics import METRIC_LABELS
from kanitts.evaluation.ranking import Sample, rank_models

from conftest import headless_chromium

NASTY = "</script><!-- & \u2028"  # closes the data element and opens a comment if not escaped
N_MODELS = 20


def _wav(path: Path, seconds: float = 0.15, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) for i in range(int(seconds * rate))))


def _values(i: int, j: int) -> dict:
    values = {key: None for key in METRIC_LABELS}
    values.update(duration_sec=0.15, chars_per_sec=10.0 + i, leading_silence_sec=0.0, trailing_silence_sec=0.01,
                  clipping_fraction=0.0, peak_dbfs=-6.0, truncated=(i + j) % 7 == 0,
                  speaker_similarity=0.9 - 0.01 * i, wer=0.02 * ((i * 7) % N_MODELS) + 0.01 * j, cer=0.01 * i)
    return values


def constructed_results(folder: Path) -> Path:
    """``eval_results.json`` of 20 models x 4 sentences, with the real speaker's references (of
    alice, none of bob), a ranking with two speakers, training and validation loss; one model
    name and one sentence carry ``</script>``."""
    models = [f"exp-{i:02d}-lora-r{8 * (i + 1)}-lr{i + 1}e-4-a-long-experiment-name" for i in range(N_MODELS)]
    models[3] = "exp-03" + NASTY
    sentences = [("s1", "alice: The quick brown fox."), ("s2", "alice: Jumps over " + NASTY),
                 ("s3", "No speaker here."), ("s4", "bob: Nobody recorded bob.")]
    rows = []
    for i, model in enumerate(models):
        for j, (sid, text) in enumerate(sentences):
            audio = f"m{i:02d}/{sid}.wav"
            _wav(folder / audio)
            rows.append({"experiment_id": model, "sentence_id": sid, "sentence": text, "take": 0, "audio": audio,
                         "sample_rate": 8000, "problems": "stopped early" if (i + j) % 7 == 0 else "",
                         "transcript": "the quick brown" if j == 0 else None, "train_configuration": "{}",
                         **_values(i, j)})
    references = []
    for kind in ("recording", "codec"):
        for k, text in enumerate(["The quick brown fox.", "Another held-out clip."]):
            audio = f"references/{kind}-{k}.wav"
            _wav(folder / audio)
            references.append({"kind": kind, "speaker": "alice", "audio": audio, "sample_rate": 8000, "text": text,
                               "transcript": text, **{key: None for key in METRIC_LABELS},
                               "wer": 0.0, "speaker_similarity": 0.95 if kind == "recording" else 0.9})
    speaker = {"s1": "alice", "s2": "alice", "s3": None, "s4": "bob"}
    samples = [Sample(r["experiment_id"], r["sentence_id"], speaker[r["sentence_id"]],
                      {"wer": r["wer"], "cer": r["cer"]}) for r in rows]
    ranking = rank_models(samples, n_resamples=50).as_dict()
    ceiling = [{"name": name, "n_clips": 2, "metrics": {"wer": {"mean": 0.0, "ci": [0.0, 0.0], "n": 2},
                                                        "cer": {"not_measured": True}}}
               for name in ("real speaker", "real speaker (codec)")]
    ranking["ceiling"] = ranking["per_speaker"]["alice"]["ceiling"] = ceiling
    ranking["per_speaker"]["bob"]["ceiling"] = []
    results = {
        "generation": {"temperature": 0.6},
        "models": [
            {"experiment_id": m, "model": f"ckpt/{m}", "checkpoint_dir": f"ckpt/{m}",
             "train_configuration": {"lora_args": {"r": 8 * (i + 1)}, "hub_token": "SECRET-TOKEN"},
             "loss_history": [{"step": s, "loss": 3.0 - 0.1 * s - 0.02 * i} for s in range(10)],
             "eval_loss_history": [{"step": s, "loss": 3.1 - 0.08 * s} for s in range(0, 10, 3)] if i % 2 else [],
             "error": None}
            for i, m in enumerate(models)
        ],
        "sentences": [{"sentence_id": sid, "sentence": text} for sid, text in sentences],
        "rows": rows,
        "references": references,
        "failures": [],
        "ranking": ranking,
    }
    path = folder / "eval_results.json"
    path.write_text(json.dumps(results))
    return path


def page_data(page: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{DATA_ELEMENT_ID}">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    root = tmp_path_factory.mktemp("constructed")
    results = constructed_results(root / "audio")
    return results, build_report(results, root / "report")


# --- the data in the page and the folder ----------------------------------------------------------


def test_embedded_json_cannot_close_its_script_element():
    text = embed_json({"name": NASTY, "n": [1.5, None, True]})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"name": NASTY, "n": [1.5, None, True]}


def test_page_carries_the_results_as_data_and_nothing_secret(constructed):
    results_json, index = constructed
    page = index.read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data element's and report.js's, none from a name
    data = page_data(page)
    results = json.loads(results_json.read_text())
    assert [m["id"] for m in data["models"]] == [m["experiment_id"] for m in results["models"]]
    assert data["models"][3]["id"].endswith(NASTY) and data["sentences"][1]["text"].endswith(NASTY)
    assert [m["key"] for m in data["metrics"]] == list(METRIC_LABELS)
    assert data["ranking"] == results["ranking"]
    assert data["models"][1]["eval_loss"] == [[p["step"], p["loss"]] for p in results["models"][1]["eval_loss_history"]]
    assert len(data["models"][1]["eval_loss"]) == 4
    assert data["models"][0]["eval_loss"] == [] and len(data["models"][0]["loss"]) == 10
    assert [c["label"] for c in data["reference_columns"]] == ["real speaker", "real speaker (codec)"]
    assert "SECRET-TOKEN" not in page and "train_configuration" not in page


def test_each_sentence_gets_a_recording_of_its_speaker_as_the_anchor(constructed):
    data = page_data(constructed[1].read_text(encoding="utf-8"))
    refs = data["references"]
    anchors = {s["id"]: s["anchors"] for s in data["sentences"]}
    # s1 is said in a recording: that one; its codec column is the same clip through the codec.
    assert refs[anchors["s1"]["@recording"]]["text"] == "The quick brown fox."
    assert refs[anchors["s1"]["@codec"]] == {**refs[anchors["s1"]["@recording"]], "kind": "codec",
                                             "audio": "audio/references/codec-0.wav", "values":
                                             refs[anchors["s1"]["@codec"]]["values"]}
    assert all(refs[anchors[s]["@recording"]]["kind"] == "recording" for s in ("s1", "s2", "s3"))
    assert anchors["s4"] == {}  # nobody recorded bob: no anchor rather than someone else's voice


def test_report_folder_holds_everything_it_links(constructed):
    index = constructed[1]
    folder = index.parent
    page = index.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the report must not load anything remote"
    assert sorted(p.name for p in folder.iterdir()) == ["audio", "index.html", "report.css", "report.js"]
    for link in re.findall(r"""(?:src|href)=['"]([^'"#]+)['"]""", page):
        if not link.startswith("data:"):
            assert (folder / link).is_file(), link
    data = page_data(page)
    for entry in data["rows"] + data["references"]:
        assert (folder / entry["audio"]).is_file(), entry["audio"]
    assert "http" not in (folder / "report.js").read_text() .replace("http://www.w3.org/2000/svg", "")


def test_results_without_references_or_ranking_still_make_a_report(constructed, tmp_path):
    results = json.loads(constructed[0].read_text())
    del results["references"]
    results["ranking"] = None
    shutil.copytree(constructed[0].parent, tmp_path / "audio")
    (tmp_path / "audio" / "eval_results.json").write_text(json.dumps(results))
    data = page_data(build_report(tmp_path / "audio" / "eval_results.json", tmp_path / "r").read_text())
    assert data["references"] == [] and data["reference_columns"] == [] and data["ranking"] is None
    assert all(s["anchors"] == {} for s in data["sentences"])


def test_a_missing_reference_clip_is_named_and_the_old_report_stays(constructed, tmp_path):
    shutil.copytree(constructed[0].parent, tmp_path / "audio")
    results = tmp_path / "audio" / "eval_results.json"
    index = build_report(results, tmp_path / "report")
    before = index.read_bytes()
    (tmp_path / "audio" / "references" / "codec-1.wav").unlink()
    with pytest.raises(UserError, match=r"references/codec-1.wav: the real speaker's codec clip \(references\[3\]\) "
                                        r"listed in .*eval_results.json is missing; run `make eval` again"):
        build_report(results, tmp_path / "report")
    assert index.read_bytes() == before


def test_an_audio_path_outside_the_audio_folder_is_refused(constructed, tmp_path):
    results = json.loads(constructed[0].read_text())
    results["rows"][0]["audio"] = "../../etc/passwd"
    (tmp_path / "eval_results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match=r"points outside"):
        build_report(tmp_path / "eval_results.json", tmp_path / "report")


def test_the_listening_report_and_the_sweep_reports_link_each_other(constructed, tmp_path, monkeypatch):
    import optuna

    from kanitts.config import EvalConfig
    from kanitts.recipes import report as report_recipe
    from kanitts.sweeps.report import write_report

    monkeypatch.chdir(tmp_path)
    shutil.copytree(constructed[0].parent, "audio")
    eval_cfg = EvalConfig.model_validate({"paths": {"audio_output_dir": "audio", "report_dir": "out/report"}})
    study = optuna.create_study(study_name="alice")
    sweep_page = write_report(study, "eval_loss", Path("sweeps/alice")).folder / "index.html"
    assert "Listening report" not in sweep_page.read_text()  # none yet: no link to nowhere
    old_page = Path("sweeps/old/index.html")  # a sweep page of an older version: linked, left as it is
    old_page.parent.mkdir()
    old_page.write_text("<html><body>old</body></html>")

    index = report_recipe.build(eval_cfg)
    page = index.read_text(encoding="utf-8")
    links = re.findall(r"<a href='([^']+)'>(alice|old)</a>", page)
    assert links == [("../../sweeps/alice/index.html", "alice"), ("../../sweeps/old/index.html", "old")]
    assert [(index.parent / href).resolve() for href, _ in links] == [sweep_page.resolve(), old_page.resolve()]
    [back] = re.findall(r"<a href='([^']+)'>Listening report</a>", sweep_page.read_text())
    assert back == "../../out/report/index.html" and (sweep_page.parent / back).resolve() == index.resolve()
    assert old_page.read_text() == "<html><body>old</body></html>"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # still nothing remote
    assert sorted(p.name for p in index.parent.iterdir()) == ["audio", "index.html", "report.css", "report.js"]
    # a sweep report written once the listening report exists links it at once
    rewritten = write_report(study, "eval_loss", Path("sweeps/alice"), listening_report=index)
    assert rewritten.listening_report == index and f"<a href='{back}'>" in sweep_page.read_text()


# --- the report of a real eval run -----------------------------------------------------------------


@pytest.fixture(scope="module")
def report(evaluated_project):
    root, summary = evaluated_project
    return root / summary.report_index, summary


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
    data = page_data(rebuilt.read_text(encoding="utf-8"))
    assert {m["id"]: m["description"] for m in data["models"]} == {"base": data["models"][0]["description"],
                                                                   "exp-a": "rank 8", "exp-b": "rank 16"}
    assert len(data["rows"]) == len(summary.rows) and all(r["audio"] for r in data["rows"])


def test_a_sample_without_audio_has_no_player(report, tmp_path):
    index, summary = report
    audio_dir = index.parent.parent / summary.results_json.parent
    results = json.loads((audio_dir / summary.results_json.name).read_text())
    results["rows"][0].update(duration_sec=0.0, problems="no audio frames generated")
    shutil.copytree(audio_dir, tmp_path / "audio", ignore=shutil.ignore_patterns("eval_dataset"))
    (tmp_path / "audio" / "eval_results.json").write_text(json.dumps(results))
    data = page_data(build_report(tmp_path / "audio" / "eval_results.json", tmp_path / "report").read_text())
    assert data["rows"][0]["audio"] is None and data["rows"][0]["problems"] == "no audio frames generated"
    assert all(r["audio"] for r in data["rows"][1:])


# --- in headless Chromium ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver():
    with headless_chromium("--window-size=1280,900") as chrome:
        yield chrome


def click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def wait_for(condition, what: str, seconds: float = 10.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def severe_logs(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def header_models(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('table.grid thead th.col'))"
                                 ".map(th => th.dataset.model || th.textContent)")


def audio_states(driver, selector: str) -> list[dict]:
    """Every matching audio element's state, once each has loaded its metadata or failed.

    The grid's players do not preload: each is asked to load here."""
    driver.execute_script("document.querySelectorAll(arguments[0]).forEach(a => a.load())", selector)
    script = ("return Array.from(document.querySelectorAll(arguments[0])).map(a => ({src: a.currentSrc, "
              "ready: a.readyState, error: a.error && a.error.code, duration: a.duration}))")

    def loaded():
        states = driver.execute_script(script, selector)
        return states if states and all(s["ready"] >= 1 or s["error"] for s in states) else None

    return wait_for(loaded, f"the audio of {selector} to load")


def row_keys(driver) -> list[list[str]]:
    """Per sentence, the sample keys in column order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('table.grid tbody tr')).map(tr => "
        "Array.from(tr.querySelectorAll('td')).map(td => (td.querySelector('.sample') || {dataset: {}}).dataset.key))")


@pytest.mark.browser
def test_every_control_of_the_report_works_in_chromium(constructed, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    index = constructed[1]
    data = page_data(index.read_text(encoding="utf-8"))
    models = [m["id"] for m in data["models"]]
    driver.get(index.resolve().as_uri())
    find = driver.find_element
    columns = models + ["@recording", "@codec"]

    # 20 models and the real speaker's two columns fit a 1280 px window; long names are cut with a tooltip.
    assert header_models(driver) == columns
    wrap = find(By.ID, "grid-wrap")
    assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", wrap)
    head = find(By.CSS_SELECTOR, f"table.grid th.col[data-model='{models[0]}']")
    assert head.get_attribute("title").startswith(models[0])
    assert driver.execute_script("const n = arguments[0].querySelector('.name'); return n.scrollWidth > n.clientWidth",
                                 head)
    nasty = find(By.CSS_SELECTOR, "table.grid th.col[data-model^='exp-03'] .name")
    assert nasty.get_attribute("textContent") == "…03" + NASTY
    assert head.get_attribute("textContent") == "…00-lora-r8-lr1e-4-a-long-experiment-name"  # the shared "exp-" cut
    assert find(By.CSS_SELECTOR, "tr[data-sentence='s2'] th .text").text.endswith("</script><!-- &")
    assert row_keys(driver)[0][-2:] == ["@recording#0", "@codec#0"]

    # Every player's WAV loads from file:// and plays.
    states = audio_states(driver, "audio")
    anchors = sum(len(s["anchors"]) for s in data["sentences"])
    assert len(states) == len(data["rows"]) + anchors + len(data["references"])
    assert all(s["error"] is None and s["src"].startswith("file://") for s in states), states
    play = find(By.CSS_SELECTOR, "tr[data-sentence='s1'] td .play")
    click(driver, play)
    wait_for(lambda: driver.execute_script("const a = document.querySelector('tr[data-sentence=s1] td audio');"
                                           "return a.ended && a.played.length > 0"), "the sample to play to its end")
    assert play.text == "▶"  # back to "play" once it ended

    # Model selection: untick one, none, all.
    click(driver, find(By.CSS_SELECTOR, f"input.model-toggle[data-model='{models[5]}']"))
    assert header_models(driver) == [c for c in columns if c != models[5]]
    assert find(By.ID, "shown-count").text == f"{len(columns) - 1} of {len(columns)} shown"
    click(driver, find(By.ID, "select-none"))
    assert header_models(driver) == [] and row_keys(driver)[0] == []
    click(driver, find(By.ID, "select-all"))
    assert header_models(driver) == columns

    # Sort the columns by mean WER, both ways; a model without the metric stays last.
    Select(find(By.ID, "sort-metric")).select_by_visible_text("mean WER")
    wer = {m: sum(r["values"]["wer"] for r in data["rows"] if r["model"] == m) / len(data["sentences"]) for m in models}
    wer["@recording"], wer["@codec"] = 0.0, 0.0
    ascending = sorted(columns, key=lambda c: (wer[c], columns.index(c)))
    assert header_models(driver) == ascending
    click(driver, find(By.ID, "sort-dir"))
    assert find(By.ID, "sort-dir").text.startswith("descending")
    assert header_models(driver) == sorted(columns, key=lambda c: (-wer[c], columns.index(c)))
    Select(find(By.ID, "sort-metric")).select_by_visible_text("composite score")
    composite = {r["model"]: r["composite"] for r in data["ranking"]["models"]}
    best_first = sorted(models, key=lambda m: (-composite[m], models.index(m)))
    assert header_models(driver) == best_first + ["@recording", "@codec"]  # no composite: last
    Select(find(By.ID, "sort-metric")).select_by_visible_text("results order")
    click(driver, find(By.ID, "sort-dir"))
    named = row_keys(driver)

    # Blind mode: no names, each sentence shuffled (stable across a reload), the real speaker hidden among them.
    click(driver, find(By.ID, "blind"))
    assert header_models(driver) == [str(i + 1) for i in range(len(columns))]
    blind = row_keys(driver)
    assert blind != named and all(sorted(map(str, b)) == sorted(map(str, n)) for b, n in zip(blind, named, strict=True))
    assert ["@recording#0" in keys for keys in blind] == [True, True, True, False]  # bob: no recording
    assert find(By.CSS_SELECTOR, "tr[data-sentence='s4']").text.count("no recording") == 2
    assert find(By.CSS_SELECTOR, "table.grid").get_attribute("textContent").count("exp-") == 0
    assert driver.find_elements(By.CSS_SELECTOR, "table.grid .who") == []
    driver.refresh()
    assert row_keys(driver) == blind and find(By.ID, "blind").is_selected()
    Select(find(By.ID, "sort-metric")).select_by_visible_text("mean CER")  # sorting cannot undo the shuffle
    assert row_keys(driver) == blind
    click(driver, find(By.ID, "reveal"))
    marks = driver.find_elements(By.CSS_SELECTOR, "table.grid .who.ref")
    assert {m.text for m in marks} == {"★ real speaker", "★ real speaker (codec)"} and len(marks) == 6
    assert row_keys(driver) == blind

    # A rating (click, then the arrow keys) and a best pick, both kept in localStorage.
    cell = find(By.CSS_SELECTOR, f"tr[data-sentence='s1'] .sample[data-key='{models[2]}#0']")
    slider = cell.find_element(By.CSS_SELECTOR, "input.rate")
    click(driver, slider)
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    rating = int(slider.get_attribute("value"))
    assert cell.find_element(By.CSS_SELECTOR, ".rv").text == str(rating)
    assert "unrated" not in slider.get_attribute("class")
    click(driver, cell.find_element(By.CSS_SELECTOR, ".pick input"))
    assert find(By.ID, "pick-summary").text == f"Best picks: {models[2]}: 1."
    click(driver, find(By.ID, "reveal"))  # names hidden again, and so are my ratings per model
    assert find(By.ID, "pick-summary").text.startswith("Best picks: 1 sentence(s) (names hidden")
    assert find(By.ID, "merged").text.startswith("Your ratings per model are hidden in blind mode")
    click(driver, find(By.ID, "blind"))  # leaving blind mode restores the names and the order
    Select(find(By.ID, "sort-metric")).select_by_visible_text("results order")
    assert header_models(driver) == columns and row_keys(driver) == named
    assert models[2] in find(By.ID, "merged").text
    assert find(By.ID, "pick-summary").text == f"Best picks: {models[2]}: 1."
    driver.refresh()
    cell = find(By.CSS_SELECTOR, f"tr[data-sentence='s1'] .sample[data-key='{models[2]}#0']")
    assert cell.find_element(By.CSS_SELECTOR, "input.rate").get_attribute("value") == str(rating)
    assert cell.find_element(By.CSS_SELECTOR, ".pick input").is_selected()

    # Export: the JSON handed to the download names the listener and holds the rating and the pick.
    driver.execute_script(
        "window.exported = []; const create = URL.createObjectURL;"
        "URL.createObjectURL = b => { window.exported.push(b); return create(b); };"
        "HTMLAnchorElement.prototype.click = function () { window.downloadName = this.download; };")
    listener = find(By.ID, "listener")
    listener.send_keys("Ada Lovelace")
    click(driver, find(By.ID, "export-ratings"))
    text = driver.execute_async_script("const done = arguments[0]; window.exported[0].text().then(done);")
    exported = json.loads(text)
    assert driver.execute_script("return window.downloadName") == "ratings-Ada_Lovelace.json"
    assert exported["listener"] == "Ada Lovelace" and exported["format"] == "kanitts-ratings"
    assert exported["ratings"] == [{"sentence": "s1", "model": models[2], "take": 0, "rating": rating}]
    assert exported["picks"] == [{"sentence": "s1", "model": models[2], "take": 0}]

    # Merge two listeners' files (and refuse a foreign one) into one table.
    other = {**exported, "listener": "Bob", "ratings": [
        {"sentence": "s1", "model": models[2], "take": 0, "rating": 20},
        {"sentence": "s2", "model": "@recording", "take": 0, "rating": 100}], "picks": []}
    files = [tmp_path / "ada.json", tmp_path / "bob.json", tmp_path / "junk.json"]
    files[0].write_text(text)
    files[1].write_text(json.dumps(other))
    files[2].write_text("[1, 2]")
    find(By.ID, "merge-files").send_keys("\n".join(str(f) for f in files))
    wait_for(lambda: "Merged: 2 listener" in find(By.ID, "merged").text, "the merged table")
    assert find(By.ID, "merge-errors").text == "junk.json: not a ratings file exported by this report"
    merged = driver.execute_script("return Array.from(document.querySelectorAll('table.merged tr'))"
                                   ".map(tr => Array.from(tr.cells).map(c => c.textContent))")
    assert merged[0] == ["model", "Ada Lovelace", "Bob", "mean rating", "ratings", "best picks"]
    assert sorted(merged[1:]) == sorted([
        [models[2], f"{rating} (1)", "20 (1)", f"{(rating + 20) / 2:g}", "2", "1"],
        ["real speaker", "-", "100 (1)", "100", "1", "0"]])

    # Ranking and per-model tables, with the real speaker as the ceiling; MOS is "not measured".
    tables = driver.find_elements(By.CSS_SELECTOR, "table.ranking")
    assert len(tables) == 3  # all, alice, bob: the ceiling rows only where the speaker has recordings
    assert [len(t.find_elements(By.CSS_SELECTOR, "tbody tr")) for t in tables] == [N_MODELS + 2] * 2 + [N_MODELS]
    ceiling = tables[0].find_elements(By.CSS_SELECTOR, "tbody tr.ref")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in ceiling] == [
        "real speaker", "real speaker (codec)"]
    assert "0 [0, 0]" in ceiling[0].text and "not measured" in ceiling[0].text
    verdict = data["ranking"]["winner"] and f"Suggested winner: {data['ranking']['winner']} (best in "
    assert (verdict or "Tie: ") in find(By.ID, "ranking-body").text
    headings = driver.find_elements(By.CSS_SELECTOR, "#ranking-body h3")
    assert [h.text for h in headings] == ["Speaker alice", "Speaker bob"]
    cells = driver.execute_script(
        "const t = document.querySelector('table.averages'), heads = Array.from(t.tHead.rows[0].cells);"
        "const tr = Array.from(t.tBodies[0].rows).find(r => r.cells[0].textContent === 'real speaker (codec)');"
        "return Object.fromEntries(heads.map((h, i) => [h.textContent, tr.cells[i].textContent]))")
    assert cells["samples"] == "2" and cells["mean speaker similarity"] == "0.9"
    assert cells["mean chars/s"] == "not measured"
    samples = find(By.CSS_SELECTOR, "table.samples")
    click(driver, samples.find_elements(By.CSS_SELECTOR, "th[data-sort]")[0])
    click(driver, samples.find_elements(By.CSS_SELECTOR, "th[data-sort]")[0])
    assert samples.find_element(By.CSS_SELECTOR, "tbody tr td").text == max(models)

    # Loss curves: one chart, validation dashed, a model toggled off, values on hover.
    curves = lambda: driver.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('svg.loss polyline'))"
        ".map(p => [p.dataset.model, p.classList.contains('val'), getComputedStyle(p).strokeDasharray])")
    drawn = curves()
    assert len(drawn) == N_MODELS + N_MODELS // 2
    assert all((dash != "none") == val for _, val, dash in drawn)
    click(driver, find(By.CSS_SELECTOR, f"input.curve-toggle[data-model='{models[1]}']"))
    assert [c for c in curves() if c[0] == models[1]] == [] and len(curves()) == len(drawn) - 2
    overlay = find(By.CSS_SELECTOR, "svg.loss rect.overlay")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", overlay)
    ActionChains(driver).move_to_element(overlay).perform()
    tip = find(By.CSS_SELECTOR, ".chart .tip")
    lines = tip.find_elements(By.CSS_SELECTOR, ".line")
    assert tip.is_displayed() and len(lines) == 8 and "+ 11 more" in tip.text and models[1] not in tip.text
    nearest = lines[0].find_element(By.CSS_SELECTOR, ".who").get_attribute("textContent")
    assert re.fullmatch(r": train [\d.]+ @ \d+(, validation [\d.]+ @ \d+)?",
                        lines[0].find_element(By.CSS_SELECTOR, ".values").get_attribute("textContent"))
    bold = driver.find_elements(By.CSS_SELECTOR, "svg.loss polyline.near")
    assert {p.get_attribute("data-model") for p in bold} == {nearest}

    # Sorting by my own ratings, then forgetting them (after a confirmation).
    Select(find(By.ID, "sort-metric")).select_by_visible_text("my mean rating")
    assert header_models(driver)[0] == models[2]  # the only model rated
    click(driver, find(By.ID, "clear-ratings"))
    driver.switch_to.alert.dismiss()
    assert driver.find_elements(By.CSS_SELECTOR, ".pick input:checked")
    click(driver, find(By.ID, "clear-ratings"))
    driver.switch_to.alert.accept()
    assert not driver.find_elements(By.CSS_SELECTOR, ".pick input:checked")
    assert not driver.find_elements(By.CSS_SELECTOR, "input.rate:not(.unrated)")
    assert find(By.ID, "pick-summary").text == "Best picks: none yet."

    # The settings filter.
    click(driver, find(By.ID, "only-diff"))
    assert "only-diff" in find(By.CSS_SELECTOR, "table.settings").get_attribute("class")

    assert severe_logs(driver) == []


@pytest.mark.browser
def test_report_of_a_real_eval_run_plays_in_chromium(report, driver):
    from selenium.webdriver.common.by import By

    index, summary = report
    data = page_data(index.read_text(encoding="utf-8"))
    driver.get(index.resolve().as_uri())
    states = audio_states(driver, "table.grid td:not(.ref) audio")
    assert len(states) == len(summary.rows)
    for state in states:
        assert state["error"] is None and state["duration"] == pytest.approx(3 * 1764 / 22050, abs=0.01)
    references = driver.find_element(By.ID, "references-body")
    if data["references"]:  # where the eval project configures the speakers' reference recordings
        anchors = audio_states(driver, "table.grid td.ref audio")
        assert len(anchors) == sum(len(s["anchors"]) for s in data["sentences"])
        clips = audio_states(driver, "#references-body audio")
        assert len(clips) == len(data["references"])
        assert "configured" in references.text  # where each clip comes from (the project configures them)
        assert all(state["error"] is None for state in anchors + clips)
    else:
        assert references.text.startswith("No recordings of the real speaker")
    assert driver.find_elements(By.CSS_SELECTOR, "svg.loss polyline")
    assert severe_logs(driver) == []


def test_a_new_metric_is_shown_without_a_change_to_the_report(constructed, tmp_path, monkeypatch):
    """Every key of METRIC_LABELS reaches the page, measured or not (a MOS nobody could compute)."""
    monkeypatch.setitem(METRIC_LABELS, "mos", "MOS")
    data = page_data(build_report(constructed[0], tmp_path / "report").read_text())
    assert {"key": "mos", "label": "MOS"} in data["metrics"]
    assert all(r["values"]["mos"] is None for r in data["rows"] + data["references"])
