import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kanitts.config import ModelConfig
from kanitts.tokens import TokenLayout

LAYOUT = TokenLayout.from_config(ModelConfig())


def test_reference_token_space():
    assert LAYOUT.codebook_offsets.tolist() == [64410, 68442, 72474, 76506]
    assert LAYOUT.audio_tokens_end == 80538
    assert LAYOUT.vocab_size == 80538


def test_frames_to_ids_interleaves_codebooks_with_offsets():
    codes = np.array([[0, 5], [1, 6], [2, 7], [4031, 8]])  # (codebooks, frames)
    ids = LAYOUT.frames_to_ids(codes)
    assert ids.tolist() == [64410, 68443, 72476, 80537, 64415, 68448, 72481, 76514]


def test_consecutive_duplicate_frames_are_dropped_but_not_repeats_later():
    frames = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [1, 2, 3, 4]])
    ids = LAYOUT.frames_to_ids(frames.T)
    assert len(ids) == 3 * 4
    assert LAYOUT.frames_to_ids(frames.T, dedup=False).shape == (20,)


def test_training_sequence_matches_reference_layout():
    seq = LAYOUT.training_ids([1, 100, 101], [64410, 68442, 72474, 76506])
    assert seq == [64403, 1, 100, 101, 2, 64404, 64405, 64401, 64410, 68442, 72474, 76506, 64402, 64406]
    assert LAYOUT.prompt_ids([1, 100]) == [64403, 1, 100, 2, 64404]
    assert seq[:6] == LAYOUT.prompt_ids([1, 100, 101])  # 3 text ids and start_of_human, end_of_text, end_of_human


def test_speaker_prefix_is_lower_cased_like_the_reference():
    assert LAYOUT.text_prompt("Hi there", "Alice") == "alice: Hi there"
    assert LAYOUT.text_prompt("Hi there", None) == "Hi there"


def test_frames_shape_is_checked():
    with pytest.raises(ValueError, match="shape"):
        LAYOUT.frames_to_ids(np.zeros((3, 5), dtype=int))


frames_strategy = st.lists(
    st.lists(st.integers(0, 4031), min_size=4, max_size=4), min_size=0, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(frames_strategy)
def test_round_trip_is_identity_after_dedup(frames):
    codes = np.array(frames, dtype=np.int64).reshape(-1, 4).T
    stream = [LAYOUT.start_of_ai, LAYOUT.start_of_speech, *LAYOUT.frames_to_ids(codes).tolist(), LAYOUT.end_of_speech]
    decoded = LAYOUT.ids_to_frames(stream)
    expected = LAYOUT.dedup_frames(codes.T).T
    assert np.array_equal(decoded.codes, expected.reshape(4, -1))
    assert not decoded.truncated and decoded.problems == []


def _stream(codes):
    return [LAYOUT.start_of_speech, *LAYOUT.frames_to_ids(np.array(codes).T, dedup=False).tolist()]


def test_missing_end_of_speech_keeps_audio_and_marks_truncated():
    decoded = LAYOUT.ids_to_frames(_stream([[1, 2, 3, 4], [5, 6, 7, 8]]))
    assert decoded.num_frames == 2 and decoded.truncated
    assert "end_of_speech" in decoded.problems[0]


def test_token_of_wrong_codebook_drops_only_its_frame():
    stream = _stream([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    stream[1 + 4 + 2] = 64410 + 3  # frame 1, slot 2 holds a codebook-0 token
    stream.append(LAYOUT.end_of_speech)
    decoded = LAYOUT.ids_to_frames(stream)
    assert decoded.codes.T.tolist() == [[1, 2, 3, 4], [9, 10, 11, 12]]
    assert decoded.dropped_frames == 1 and not decoded.truncated
    assert "frame 1" in decoded.problems[0] and "codebook-2" in decoded.problems[0]
    assert decoded.problems[-1] == "1 of 3 frame(s) dropped as broken"


def test_frames_start_again_after_an_inserted_or_missing_token():
    good = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    inserted = _stream(good) + [LAYOUT.end_of_speech]
    inserted.insert(1 + 4 + 1, 500)  # a text token inside frame 1: every later slot shifts by one
    missing = _stream(good) + [LAYOUT.end_of_speech]
    del missing[1 + 8 + 3]  # frame 2 loses its codebook-3 token
    for stream, kept in ((inserted, [0, 2, 3]), (missing, [0, 1, 3])):
        decoded = LAYOUT.ids_to_frames(stream)
        assert decoded.codes.T.tolist() == [good[i] for i in kept]
        assert decoded.dropped_frames == 1 and not decoded.truncated


def test_text_token_inside_audio_is_reported():
    stream = _stream([[1, 2, 3, 4]]) + [500, 64410, LAYOUT.end_of_speech]
    decoded = LAYOUT.ids_to_frames(stream)
    assert decoded.num_frames == 1 and "token 500" in decoded.problems[0]


def test_many_broken_places_are_counted_and_the_first_ones_described():
    frames = [[i, i, i, i] for i in range(20)]
    stream = _stream(frames) + [LAYOUT.end_of_speech]
    for frame in range(0, 20, 2):  # every other frame gets a text token in slot 1
        stream[1 + 4 * frame + 1] = 7
    decoded = LAYOUT.ids_to_frames(stream)
    assert decoded.codes.T.tolist() == frames[1::2] and decoded.dropped_frames == 10
    assert len(decoded.problems) == 5 + 2
    assert decoded.problems[-2:] == ["... and 5 more broken place(s)", "10 of 20 frame(s) dropped as broken"]


def test_partial_last_frame_is_dropped():
    stream = _stream([[1, 2, 3, 4], [5, 6, 7, 8]])[:-1] + [LAYOUT.end_of_speech]
    decoded = LAYOUT.ids_to_frames(stream)
    assert decoded.num_frames == 1 and "partial" in decoded.problems[0] and decoded.truncated


def test_a_broken_last_frame_marks_the_audio_truncated():
    stream = _stream([[1, 2, 3, 4], [5, 6, 7, 8]]) + [LAYOUT.end_of_speech]
    stream[-2] = 500  # the last frame's codebook-3 token
    decoded = LAYOUT.ids_to_frames(stream)
    assert decoded.num_frames == 1 and decoded.dropped_frames == 1 and decoded.truncated


def test_the_same_rule_finds_the_audio_with_or_without_markers():
    codes = [[1, 2, 3, 4], [5, 6, 7, 8]]
    audio = LAYOUT.frames_to_ids(np.array(codes).T, dedup=False).tolist()
    s = LAYOUT
    streams = {
        "both markers": [s.start_of_ai, s.start_of_speech, *audio, s.end_of_speech, s.end_of_ai],
        "no start_of_speech": [s.start_of_ai, *audio, s.end_of_speech],
        "no markers": [*audio, s.end_of_speech],
        "text before the audio": [5, 6, *audio, s.end_of_speech],
        "a second start_of_speech": [s.start_of_speech, *audio[:5], s.start_of_speech, *audio, s.end_of_speech],
        "ends at end_of_ai": [s.start_of_speech, *audio, s.end_of_ai, *audio],
        "ends at padding": [s.start_of_speech, *audio, s.pad, s.pad],
    }
    problems = {}
    for name, stream in streams.items():
        decoded = LAYOUT.ids_to_frames(stream)
        assert decoded.codes.T.tolist() == codes, name
        assert not decoded.truncated and decoded.dropped_frames == 0, name
        problems[name] = decoded.problems
    assert problems["no start_of_speech"] == ["no start_of_speech token: audio read from after start_of_ai"]
    assert problems["text before the audio"] == [
        "no start_of_speech token: 2 token(s) before the first audio token skipped"
    ]
    assert all(not problems[name] for name in ("both markers", "no markers", "a second start_of_speech",
                                                "ends at end_of_ai", "ends at padding"))


def test_empty_and_garbage_streams_do_not_raise():
    assert LAYOUT.ids_to_frames([]).num_frames == 0
    garbage = LAYOUT.ids_to_frames([5, 6, 7])
    assert garbage.num_frames == 0 and garbage.truncated
    text = LAYOUT.ids_to_frames([LAYOUT.start_of_speech, 5, 6, 7, 8, LAYOUT.end_of_speech])
    assert text.num_frames == 0 and text.dropped_frames == 0
    assert text.problems == ["token 5 at audio position 0 (frame 0) is not a codebook-0 token; dropped 4 token(s)"]


def test_tiny_layout_matches_tiny_tokenizer(tiny_tokenizer, tiny_layout):
    ids = tiny_tokenizer.encode("alice: hello", add_special_tokens=True)
    assert ids[0] == tiny_layout.start_of_text
    assert max(ids) < tiny_layout.text_vocab_size < tiny_layout.start_of_speech
