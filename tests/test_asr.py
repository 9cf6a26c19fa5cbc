"""kanitts.asr (the Transcriber) on a tiny random Whisper, and the intelligibility scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kanitts.errors import UserError
from kanitts.evaluation.intelligibility import intelligibility, is_english, normalize


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from kanitts.tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("whisper"), spelling={"colour": "color"})


@pytest.fixture(scope="module")
def transcriber(tiny_whisper):
    from kanitts.asr import Transcriber

    return Transcriber(tiny_whisper, language="en", device="cpu", batch_size=3)


def _clips():
    rng = np.random.default_rng(0)
    return [
        (0.1 * rng.standard_normal(8000).astype(np.float32), 16000),
        (0.1 * rng.standard_normal(11025).astype(np.float32), 22050),  # resampled to 16 kHz
        (0.1 * rng.standard_normal((4000, 2)).astype(np.float32), 16000),  # stereo: made mono
        (0.1 * rng.standard_normal(12000).astype(np.float32), 24000),
    ]


def test_transcriber_loads_a_local_folder_offline(transcriber, tiny_whisper):
    assert transcriber.sample_rate == 16000
    assert transcriber.spelling == {"colour": "color"}  # the tokenizer's normalizer.json
    assert transcriber._generate_kwargs == {"language": "en", "task": "transcribe"}
    assert transcriber.name == str(tiny_whisper)


def test_transcripts_for_a_batch_equal_one_at_a_time(transcriber):
    clips = _clips()
    batched = transcriber.transcribe(clips)
    assert len(batched) == len(clips)
    assert all(isinstance(text, str) for text in batched)
    single = [transcriber.transcribe([clip])[0] for clip in clips]
    assert single == batched


def test_an_empty_clip_is_an_empty_transcript(transcriber):
    clips = _clips()[:1]
    texts = transcriber.transcribe([(np.zeros(0, np.float32), 16000), *clips])
    assert texts[0] == ""
    assert texts[1:] == transcriber.transcribe(clips)
    assert transcriber.transcribe([]) == []


def test_an_english_only_model_is_not_given_a_language(tiny_whisper, tmp_path):
    import shutil

    from kanitts.asr import Transcriber

    folder = tmp_path / "english_only"
    shutil.copytree(tiny_whisper, folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    generation["is_multilingual"] = False
    (folder / "generation_config.json").write_text(json.dumps(generation))
    transcriber = Transcriber(folder, language="en", device="cpu")
    assert transcriber._generate_kwargs == {}
    assert isinstance(transcriber.transcribe(_clips()[:1])[0], str)


def test_a_missing_folder_is_named(tmp_path):
    from kanitts.asr import Transcriber

    with pytest.raises(UserError, match=f"ASR model {tmp_path / 'nope'}: no such folder"):
        Transcriber(tmp_path / "nope", device="cpu")


def test_a_folder_without_a_model_is_named(tmp_path):
    from kanitts.asr import Transcriber

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match=f"ASR model folder {tmp_path}: not a transformers model"):
        Transcriber(tmp_path, device="cpu")


def test_a_model_that_is_not_asr_is_named(tiny_tts):
    from kanitts.asr import Transcriber

    folder = tiny_tts[0]
    with pytest.raises(UserError, match=f"ASR model {folder}: its config.json is a 'lfm2' model, not a speech"):
        Transcriber(folder, device="cpu")


def test_corrupt_weights_are_named(tiny_whisper, tmp_path):
    import shutil

    from kanitts.asr import Transcriber

    folder = tmp_path / "broken"
    shutil.copytree(tiny_whisper, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match=r"model\.safetensors is truncated or corrupt"):
        Transcriber(folder, device="cpu")
    assert (tiny_whisper / "model.safetensors").stat().st_size > 100  # the original is untouched


def test_a_hub_model_not_in_the_cache_offline_is_one_line(monkeypatch, tmp_path):
    from kanitts.asr import Transcriber

    monkeypatch.chdir(tmp_path)
    expected = r"cannot load the ASR model 'nobody/no-such-asr' from the Hugging Face Hub"
    with pytest.raises(UserError, match=expected) as info:
        Transcriber("nobody/no-such-asr", device="cpu")
    assert "\n" not in str(info.value)
    assert "HF_HUB_OFFLINE=1" in str(info.value)


def test_bad_batch_size():
    from kanitts.asr import Transcriber

    with pytest.raises(UserError, match="ASR batch size must be at least 1, got 0"):
        Transcriber("nobody/no-such-asr", batch_size=0)


@pytest.mark.parametrize(
    ("reference", "transcript", "wer"),
    [
        ("Hello, World!", "hello world", 0.0),
        ("the cat sat down", "the dog sat down", 0.25),
        ("the cat sat down", "", 1.0),
        ("I won't pay twenty one dollars.", "I will not pay $21", 0.0),  # contractions, numbers
        ("Mr. Smith, um, arrived", "mister smith arrived", 0.0),  # titles, fillers
    ],
)
def test_word_error_rate_on_known_strings(reference, transcript, wer):
    scores = intelligibility(reference, transcript, "en")
    assert scores["wer"] == wer
    assert scores["transcript"] == transcript


def test_scores_carry_what_was_compared():
    scores = intelligibility("Hello, World!", "Hello wordl", "en")
    assert scores == {
        "wer": 0.5,
        "cer": round(2 / 11, 4),  # "world" -> "wordl": two substitutions in "hello world"
        "transcript": "Hello wordl",
        "reference_normalized": "hello world",
        "transcript_normalized": "hello wordl",
    }


def test_english_spelling_uses_the_models_mapping():
    assert intelligibility("the colour red", "the color red", "en", spelling={"colour": "color"})["wer"] == 0.0
    # without the mapping the British spelling is a different word
    assert intelligibility("the colour red", "the color red", "en")["wer"] == round(1 / 3, 4)


def test_a_reference_with_no_words_has_no_error_rate():
    scores = intelligibility("?! (laughs)", "hello", "en")
    assert scores["wer"] is None and scores["cer"] is None
    assert scores["transcript_normalized"] == "hello"


def test_other_languages_use_the_basic_normaliser():
    assert normalize("  Ｂonjour,   l'Été!  ", "fr") == "bonjour l été"  # NFKC, punctuation, diacritics kept
    assert intelligibility("Où est-il ?", "où est il", "fr")["wer"] == 0.0
    assert normalize("twenty one", "de") == "twenty one"  # number words are English-only


@pytest.mark.parametrize(("language", "english"), [("en", True), ("English", True), ("en-GB", True),
                                                   ("en_US", True), ("fr", False), (None, False)])
def test_which_languages_are_english(language, english):
    assert is_english(language) is english


def test_scored_transcripts_carry_a_confidence(transcriber, tiny_whisper):
    """transcribe_scored decodes as the pipeline does (5 beams) and adds the mean log-probability."""
    clips = _clips()
    scored = transcriber.transcribe_scored([(np.zeros(0, np.float32), 16000), *clips])
    assert scored[0].text == "" and scored[0].confidence is None
    assert all(t.confidence is not None and t.confidence <= 0 for t in scored[1:])
    # the same words as the pipeline; this tiny vocabulary does not list the no-timestamps
    # token as special, so the pipeline leaves it in its text
    plain = [text.replace("<|notimestamps|>", "") for text in transcriber.transcribe(clips)]
    assert [t.text for t in scored[1:]] == plain
    assert [transcriber.transcribe_scored([clip])[0] for clip in clips] == scored[1:]



def test_scored_transcripts_time_their_words_where_the_model_can(transcriber, tmp_path):
    """Word times come from Whisper's alignment heads (the tiny model's are noise: only their
    shape is checked); a model without alignment heads gives none, and nothing else changes."""
    from kanitts.asr import Transcriber
    from kanitts.tiny import build_tiny_whisper

    clips = _clips()
    attention = transcriber.pipe.model.config._attn_implementation
    timed = transcriber.transcribe_scored(clips, words=True)
    assert transcriber.word_timestamps
    assert transcriber.pipe.model.config._attn_implementation == attention  # generate's switch to eager undone
    plain = transcriber.transcribe_scored(clips)
    assert [(t.text, t.confidence) for t in timed] == [(t.text, t.confidence) for t in plain]
    for t in timed:
        assert t.words is not None and " ".join(w.text for w in t.words) == " ".join(t.text.split())
        assert all(0 <= w.start <= w.end for w in t.words)
        assert all(a.end == b.start for a, b in zip(t.words, t.words[1:]))  # no gaps between words
    untimed = Transcriber(build_tiny_whisper(tmp_path, alignment_heads=False), device="cpu", batch_size=3)
    assert not untimed.word_timestamps
    assert all(t.words is None for t in untimed.transcribe_scored(clips[:2], words=True))
