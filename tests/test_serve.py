"""`kanitts serve`: the OpenAI-compatible API, streaming, long texts, batching, limits and the page.

One server with the tiny models runs in-process on a loopback port for the module; tests that
need other settings build their own small one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from kanitts.config import InferenceConfig, load_config
from kanitts.errors import ConfigError, UserError
from kanitts.inference import KaniTTS
from kanitts.serving.engine import Done, Engine, Job
from kanitts.serving.generation import FrameStreamer, RowStopper, Sampling
from kanitts.serving.server import Server, api_key_for
from kanitts.serving.text import split_text

from conftest import headless_chromium

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

SPF = 1764
RATE = 22050
KEY = "a-test-key-of-some-length"


def _config(**server) -> InferenceConfig:
    return InferenceConfig.model_validate({
        "model": {"torch_dtype": "float32"},
        "generation": {"max_new_tokens": 40, "constrained_decoding": True, "temperature": 0.8},
        "server": {"port": 0, "batch_wait_ms": 150, "piece_silence_ms": 100, **server},
    })


@pytest.fixture(scope="module")
def tts(tiny_tts, tiny_codec):
    folder, cfg = tiny_tts
    return KaniTTS.from_pretrained(folder, codec=tiny_codec, model_cfg=cfg, inference_cfg=_config(), device="cpu")


@pytest.fixture(scope="module")
def server(tts):
    cfg = _config(max_piece_chars=40, max_input_chars=600, max_body_bytes=4096)
    with Server({"tiny": tts}, cfg.server, cfg.generation, log_level="warning") as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _speech(server, timeout=60, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/audio/speech", json={"model": "tiny", **body}, timeout=timeout)


def _sse_events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


# --- the API ------------------------------------------------------------------------------------


def test_models_health_and_page(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    entry = httpx.get(server.url + "/v1/models/tiny").json()
    assert entry["object"] == "model" and entry["sample_rate"] == RATE
    assert {"wav", "pcm", "flac"} <= set(entry["response_formats"])
    health = httpx.get(server.url + "/health").json()
    assert (health["status"], health["api_key_required"], list(health["models"])) == ("ok", False, ["tiny"])
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace(server.url, "")  # every asset is local
    assert httpx.get(server.url + "/static/page.js").status_code == 200


def test_the_openai_client_gets_wav_and_a_stream_of_the_same_audio(client):
    settings = {"model": "tiny", "input": "Hello there.", "voice": "alice", "extra_body": {"seed": 7}}
    wav = client.audio.speech.create(response_format="wav", **settings)
    audio, rate = sf.read(io.BytesIO(wav.content), dtype="int16")
    assert rate == RATE and len(audio) > 0 and len(audio) % SPF == 0

    chunks = []
    with client.audio.speech.with_streaming_response.create(response_format="pcm", **settings) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["x-sample-rate"] == str(RATE)
        for chunk in response.iter_bytes():
            chunks.append(chunk)
    assert len(chunks) > 1  # sent as generated, not at the end
    np.testing.assert_array_equal(np.frombuffer(b"".join(chunks), "<i2"), audio)


def test_whole_file_formats_are_real_files(server):
    for fmt in ("flac", "mp3", "opus"):
        response = _speech(server, input="Hi.", response_format=fmt, seed=1, max_new_tokens=14)
        assert response.status_code == 200, response.text
        audio, rate = sf.read(io.BytesIO(response.content))
        assert len(audio) > 0 and rate == (24000 if fmt == "opus" else RATE)


def test_audio_can_be_sent_at_openais_24_khz(tts):
    cfg = _config(sample_rate=24000)
    with Server({"tiny": tts}, cfg.server, cfg.generation, log_level="warning") as running:
        body = {"input": "Hello there.", "seed": 5, "max_new_tokens": 26}
        stream = _speech(running, response_format="pcm", **body)
        whole = _speech(running, response_format="flac", **body)
    assert stream.headers["x-sample-rate"] == "24000"
    streamed = np.frombuffer(stream.content, "<i2")
    audio, rate = sf.read(io.BytesIO(whole.content), dtype="int16")
    assert rate == 24000 and len(streamed) == len(audio) > 0
    assert len(audio) * RATE % (24000 * SPF) == 0  # whole frames, at 24 kHz
    assert np.abs(streamed.astype(int) - audio).max() <= 1  # chunk-wise resampling = resampling the whole


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"model": "other", "input": "Hi."}, 404, "model", "model_not_found"),
    ({"input": "Hi."}, 400, "model", "missing_required_parameter"),
    ({"model": "tiny", "input": "   "}, 400, "input", "invalid_value"),
    ({"model": "tiny", "input": "x" * 601}, 400, "input", "string_above_max_length"),
    ({"model": "tiny", "input": "Hi.", "voice": "../../etc/passwd"}, 400, "voice", "invalid_value"),
    ({"model": "tiny", "input": "Hi.", "response_format": "aac"}, 400, "response_format", "invalid_value"),
    ({"model": "tiny", "input": "Hi.", "speed": 1.5}, 400, "speed", "unsupported_value"),
    ({"model": "tiny", "input": "Hi.", "speed": 9}, 400, "speed", "invalid_value"),
    ({"model": "tiny", "input": "Hi.", "temperature": -1}, 400, "temperature", "invalid_value"),
    ({"model": "tiny", "input": "Hi.", "max_new_tokens": 100000}, 400, "max_new_tokens", "invalid_value"),
    ({"model": "tiny", "input": "Hi.", "stream_format": "sse", "response_format": "flac"}, 400, "stream_format",
     "invalid_value"),
    ({"model": "tiny", "input": "Hi.", "model_path": "/tmp/x"}, 400, "model_path", "unknown_parameter"),
])
def test_errors_come_in_openai_shape(server, body, status, param, code):
    response = httpx.post(server.url + "/v1/audio/speech", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error" and error["message"]


def test_the_openai_client_raises_its_own_errors(client, server):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.audio.speech.create(model="gpt-4o-mini-tts", input="Hi.", voice="alloy")
    with pytest.raises(openai.BadRequestError, match="voice"):
        client.audio.speech.create(model="tiny", input="Hi.", voice="a b")
    too_big = httpx.post(server.url + "/v1/audio/speech", content=b"{" + b" " * 5000 + b"}",
                         headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    # sent in chunks, without a Content-Length: refused once the limit is passed on arrival
    chunked = httpx.post(server.url + "/v1/audio/speech", content=iter([b"{" + b" " * 1000] * 5 + [b"}"]),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    assert httpx.post(server.url + "/v1/audio/speech", content=b"{not json").json()["error"]["message"].startswith(
        "the request body is not JSON")
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["message"] == "Not Found"


# --- streaming ----------------------------------------------------------------------------------


def test_streamed_chunks_join_to_the_whole_utterance_decode(tts):
    """Tokens fed one by one decode chunk by chunk to what decoding all frames at once gives."""
    layout = tts.layout
    generated = tts.generate_ids([tts.prompt_ids("The quick brown fox jumps over the lazy dog.")], do_sample=False,
                                 max_new_tokens=50)[0]
    codes = layout.ids_to_frames(generated).codes
    whole = tts.codec.decode(torch.from_numpy(codes)[None])[0][0].numpy()
    ids = [layout.start_of_ai, layout.start_of_speech, *layout.frames_to_ids(codes, dedup=False).tolist(),
           layout.end_of_speech]
    chunks, done = [], []
    stopper = RowStopper([lambda: False], [len(ids)], prompt_width=1)
    streamer = FrameStreamer(layout, tts.codec, stopper, 3, lambda row, a: chunks.append(a),
                             lambda row, frames, n, problem: done.append((frames, problem)))
    streamer.put(torch.tensor([[0]]))  # the prompt
    for token in ids:
        streamer.put(torch.tensor([token]))
    assert len(chunks) == -(-codes.shape[1] // 3) > 2 and done[0][1] is None
    joined = np.concatenate(chunks)
    assert joined.shape == whole.shape
    assert np.abs(joined - whole).max() < 1e-5  # docs/serving.md: the stated tolerance


# --- long texts ---------------------------------------------------------------------------------


def test_split_text_at_sentences_then_clauses_then_words():
    text = ("Short one. A second sentence, which has a clause; and it goes on for quite a while now! "
            "\"Quoted?\" " + "word " * 12)
    pieces = split_text(text, 40)
    assert pieces[:2] == ["Short one.", "A second sentence, which has a clause;"]
    assert "\"Quoted?\"" in pieces
    assert all(len(p) <= 40 for p in pieces)
    assert " ".join(pieces).split() == text.split()  # nothing lost, nothing reordered
    assert split_text("x" * 50, 20) == ["x" * 50]  # a word longer than the limit stays whole


def test_a_long_text_is_one_batch_of_pieces_joined_with_silence(server):
    text = "Hello there. The quick brown fox jumps over the lazy dog, and runs away. Please call Stella."
    pieces = split_text(text, 40)
    assert len(pieces) == 4
    batches = len(server.engines["tiny"].stats.batch_rows)
    response = _speech(server, input=text, response_format="pcm", stream_format="sse", seed=3, max_new_tokens=22)
    events = _sse_events(response.text)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["pieces"] == 4
    prompts = sum(len(server.engines["tiny"].tts.prompt_ids(piece)) for piece in pieces)
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == prompts and usage["total_tokens"] == prompts + usage["output_tokens"]
    audio = np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), "<i2")
    silence = round(0.1 * RATE)
    assert len(audio) == events[-1]["frames"] * SPF + 3 * silence
    assert server.engines["tiny"].stats.batch_rows[batches:] == [4]


# --- several clients ----------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(tts):
    texts = ["Hello there.", "The quick brown fox.", "Please call Stella."]
    # A long gather window that closes as soon as the batch is full: the three requests are
    # generated together however slowly the threads start on a busy machine.
    cfg = _config(max_batch_size=3, batch_wait_ms=10_000)
    sampling = {"temperature": 0.9, "max_new_tokens": 26}
    together: dict[int, bytes] = {}
    with Server({"tiny": tts}, cfg.server, cfg.generation, log_level="warning") as server:
        engine = server.engines["tiny"]

        def ask(i: int) -> None:
            together[i] = _speech(server, input=texts[i], response_format="pcm", seed=10 + i, **sampling).content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert engine.stats.batch_rows == [3]
    alone_cfg = _config(batch_wait_ms=0)
    with Server({"tiny": tts}, alone_cfg.server, alone_cfg.generation, log_level="warning") as server:
        for i, text in enumerate(texts):
            alone = _speech(server, input=text, response_format="pcm", seed=10 + i, **sampling).content
            assert alone == together[i] and len(alone) > 0
        assert together[0] != _speech(server, input=texts[0], response_format="pcm", seed=99, **sampling).content
        assert server.engines["tiny"].stats.batch_rows == [1, 1, 1, 1]


def test_a_client_that_leaves_stops_its_generation(tts):
    cfg = _config(stream_chunk_frames=1, batch_wait_ms=0)
    generation = cfg.generation.model_copy(update={"max_new_tokens": 4000})
    with Server({"tiny": tts}, cfg.server, generation, log_level="warning") as running:
        engine = running.engines["tiny"]
        body = {"model": "tiny", "input": "Hello there.", "response_format": "pcm", "max_new_tokens": 4000}
        with httpx.stream("POST", running.url + "/v1/audio/speech", json=body, timeout=30) as response:
            next(response.iter_bytes())  # the first audio has come: leave
        deadline = time.monotonic() + 30
        while engine.stats.stopped_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats.stopped_rows == 1
        assert engine.stats.generated_tokens[-1] < 4000


def test_a_stream_past_its_timeout_ends_with_an_error_event(tts):
    cfg = _config(request_timeout_s=2.0, batch_wait_ms=0)
    generation = cfg.generation.model_copy(update={"max_new_tokens": 4000})
    with Server({"tiny": tts}, cfg.server, generation, log_level="warning") as running:
        response = _speech(running, input="Hello there.", response_format="pcm", stream_format="sse",
                           max_new_tokens=4000)
        stats = running.engines["tiny"].stats
    events = _sse_events(response.text)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "timeout"
    assert stats.stopped_rows == 1 and stats.generated_tokens[-1] < 4000


def test_a_full_queue_answers_429_and_a_late_request_504(tts):
    cfg = _config(max_queue=1, request_timeout_s=0.3)
    engine = Engine(tts, cfg.server, "tiny")  # never started: nothing leaves the queue
    server = Server({}, cfg.server, cfg.generation, log_level="warning")
    server.engines["tiny"] = engine
    with server:
        late = _speech(server, input="Hi.")
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        assert engine.queued == 1  # the waiting one still holds the only place
        full = _speech(server, input="Hi.")
        assert full.status_code == 429
        assert full.json()["error"]["code"] == "queue_full" and int(full.headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).audio.speech.create(
                model="tiny", input="Hi.", voice="alice")
        engine.stop()
        stopping = _speech(server, input="Hi.")
        assert stopping.status_code == 503 and "retry-after" in stopping.headers


def test_an_engine_job_ends_when_its_deadline_has_passed(tts):
    engine = Engine(tts, _config().server, "tiny").start()

    async def run() -> Done:
        job = Job(["Hello."], None, Sampling(True, 0.8, 0.95, 1.1, 40, 1), 0.0, 0, asyncio.get_running_loop())
        engine.submit(job)
        while not isinstance(item := await job.audio.get(), Done):
            pass
        return item

    try:
        done = asyncio.run(run())
    finally:
        engine.stop()
    assert done.timed_out and done.frames == 0


# --- safety -------------------------------------------------------------------------------------


def test_other_addresses_need_an_api_key():
    cfg = _config().server
    with pytest.raises(UserError, match="KANITTS_API_KEY"):
        api_key_for(cfg, "0.0.0.0", environ={})
    assert api_key_for(cfg, "127.0.0.1", environ={}) is None
    with pytest.raises(UserError, match="at least 16"):
        api_key_for(cfg, "0.0.0.0", environ={"KANITTS_API_KEY": "short"})
    assert api_key_for(cfg, "0.0.0.0", environ={"KANITTS_API_KEY": KEY}) == KEY


def test_the_api_key_is_required_when_set(tts):
    cfg = _config()
    with Server({"tiny": tts}, cfg.server, cfg.generation, api_key=KEY, log_level="warning") as running:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            refused = httpx.get(running.url + "/v1/models", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        health = httpx.get(running.url + "/health")  # open, so that the page can ask for the key
        assert health.status_code == 200 and health.json()["api_key_required"] is True


def test_serve_refuses_an_open_address_without_a_key_before_loading(tmp_path, capsys, monkeypatch):
    from kanitts.cli import main

    monkeypatch.delenv("KANITTS_API_KEY", raising=False)
    code = main(["serve", "--model", str(tmp_path / "missing"), "--host", "0.0.0.0",
                 "--config-dir", str(Path(__file__).resolve().parents[1] / "config")])
    assert code == 1
    assert "set an API key first (export KANITTS_API_KEY=" in capsys.readouterr().err


def test_serve_refuses_a_port_it_cannot_listen_on_before_loading(tmp_path, capsys):
    import socket

    from kanitts.cli import main

    config_dir = str(Path(__file__).resolve().parents[1] / "config")
    serve = ["serve", "--model", str(tmp_path / "missing"), "--config-dir", config_dir]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*serve, "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use (is another server running there?)" in err
    assert main([*serve, "--port", "70000"]) == 1
    assert "port 70000 is not a port: give one from 0 to 65535 (--host / --port" in capsys.readouterr().err
    # the model (missing here) is only looked at once the address is known to work
    assert main([*serve, "--port", "0"]) == 1
    assert "model folder not found" in capsys.readouterr().err


def test_the_server_section_is_validated_with_its_key_path(tmp_path):
    (tmp_path / "inference_config.yaml").write_text(
        "server:\n  port: 70000\n  voices: [alice, ../x]\n  hots: a\n  voice_clips: {../y: a.wav}\n"
        "  default_voice: a b\n")
    with pytest.raises(ConfigError) as info:
        load_config("inference", tmp_path)
    text = "\n".join(info.value.problems)
    for where in ("server.port", "server.voices", "server.hots"):
        assert where in text, text
    for where, name in (("voice_clips", "../y"), ("default_voice", "a b")):
        assert f"server.{where}: {name!r} is not a voice name (letters, digits, _ . -, at most 64)" in text, text


# --- the page -----------------------------------------------------------------------------------

@pytest.mark.browser
def test_the_page_plays_while_streaming_in_headless_chromium(server):
    from selenium.webdriver.common.by import By

    with headless_chromium() as driver:
        driver.get(server.url + "/")
        deadline = time.time() + 30
        while time.time() < deadline and not driver.find_elements(By.CSS_SELECTOR, "#model option"):
            time.sleep(0.1)
        assert driver.find_element(By.ID, "temperature").get_attribute("value") == "0.8"
        text = driver.find_element(By.ID, "text")
        text.clear()
        text.send_keys("Hello there. Please call Stella.")
        driver.find_element(By.ID, "voice").send_keys("alice")
        driver.find_element(By.ID, "speak").click()
        stats = {}
        while time.time() < deadline:
            stats = driver.execute_script("return window.kanitts")
            if stats["done"] and stats["played"] >= stats["received"] > 0:
                break
            time.sleep(0.1)
        assert stats["error"] is None, stats
        assert stats["received"] > 0 and stats["played"] == stats["received"], stats
        assert stats["firstAudioMs"] is not None
        link = driver.find_element(By.ID, "download")
        assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
        severe = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert severe == [], severe
