"""The ``server`` section of inference_config.yaml: how ``kanitts serve`` listens, batches and limits."""

from __future__ import annotations

import re

from pydantic import Field, PositiveInt, field_validator

from kanitts.config.schemas.base import Strict, Text

#: a voice (speaker prefix) as a request may name it: a short word, never a path
VOICE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: what POST /v1/audio/speech can answer with (opus and mp3 need a libsndfile that writes them)
RESPONSE_FORMATS = ("wav", "pcm", "flac", "mp3", "opus")


class ServerSection(Strict):
    # 127.0.0.1 keeps the server on this machine; any other address needs an API key (api_key_env).
    host: Text = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # The name of the environment variable holding the API key (the key itself never goes in a file).
    # When that variable is set, every /v1 request must send `Authorization: Bearer <key>`.
    api_key_env: Text = "KANITTS_API_KEY"
    # Dynamic batching: requests that arrive within batch_wait_ms of the first are generated together,
    # up to max_batch_size rows (one row per piece of text).
    max_batch_size: PositiveInt = 8
    batch_wait_ms: int = Field(20, ge=0, le=10_000)
    # Requests waiting for generation; one more is answered 429 with Retry-After.
    max_queue: PositiveInt = 32
    # From arrival to the last audio sample; past it generation stops (504, or the stream ends).
    request_timeout_s: float = Field(120.0, gt=0)
    max_input_chars: PositiveInt = 4096
    max_body_bytes: PositiveInt = 65536
    # Long texts are split at sentence, then clause, boundaries into pieces of at most this many
    # characters (training clips are at most ~12 s, about 180 characters of English), generated in
    # one batch and joined with piece_silence_ms of silence.
    max_piece_chars: int = Field(180, ge=20)
    piece_silence_ms: int = Field(200, ge=0, le=5000)
    # Streaming: audio is sent every stream_chunk_frames codec frames (NanoCodec: 80 ms each).
    stream_chunk_frames: PositiveInt = 4
    # Voices (speaker prefixes) a request may ask for; empty: any name of letters, digits, _ . -
    voices: list[Text] = []
    # Voices cloned from reference clips, for models whose codec has a voice embedding (Kanade):
    # name -> audio file (relative to this file's folder), embedded once at startup; a request's
    # `voice: <name>` speaks in it. A request never names a file.
    voice_clips: dict[Text, Text] = {}
    # The voice used when a request names none, or names `default`; null: no speaker prefix.
    default_voice: Text | None = None
    response_format: Text = "wav"
    # The rate of the audio sent: null, the codec's own (22050 Hz for NanoCodec); 24000 is OpenAI's
    # pcm rate, for clients that play raw pcm at 24 kHz without reading X-Sample-Rate.
    sample_rate: int | None = Field(None, ge=8000, le=192000)

    @field_validator("voices", "voice_clips", "default_voice")
    @classmethod
    def _voices_are_names(cls, value):
        names = [value] if isinstance(value, str) else list(value or ())  # a mapping: its keys
        bad = [v for v in names if not VOICE_PATTERN.match(v)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a voice name (letters, digits, _ . -, at most 64)")
        return value

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in RESPONSE_FORMATS:
            raise ValueError(f"{value!r} is not one of {', '.join(RESPONSE_FORMATS)}")
        return value

