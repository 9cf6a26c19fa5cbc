"""The FastAPI application: OpenAI's speech endpoint, the model list, health, and the page.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so OpenAI clients
raise their usual exceptions (``BadRequestError``, ``AuthenticationError``, ``RateLimitError``...).
Nothing in a request names a file or loads a model: ``model`` picks one of the models the server
was started with, ``voice`` is a speaker prefix checked against a pattern (or the configured list);
for a codec with voice embeddings (Kanade) it is one of the model's named voices (training
speakers, ``server.voices``, the clips of ``server.voice_clips`` embedded at startup).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kanitts.config import GenerationSection, ServerSection
from kanitts.config.schemas.server import VOICE_PATTERN
from kanitts.inference import text_problem
from kanitts.serving.engine import Done, Engine, Job, QueueFull, Stopped
from kanitts.serving.formats import MEDIA_TYPES, STREAMED, available_formats, encode_whole, pcm16, wav_header
from kanitts.serving.generation import Sampling
from kanitts.serving.text import split_text

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class SpeechRequest(BaseModel):
    """OpenAI's speech request, plus this server's sampling settings (sent as extra body fields)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str
    voice: str | None = None
    response_format: str | None = None
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None
    # this server's additions
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=5.0)
    max_new_tokens: int | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0, lt=2**62)


def _bearer_matches(header: str | None, key: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    # compare_digest: the time taken says nothing about how much of the key was right
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware in front of everything: the API key on /v1 and the request body size limit.

    Written as plain ASGI because the limit must hold while the body arrives (a missing or false
    Content-Length must not get a large body read into memory).
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"].startswith("/v1") and not _bearer_matches(
                headers.get("authorization"), self.api_key):
            error = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             "authentication_error", code="invalid_api_key")
            return await error.response()(scope, receive, send)
        too_large = ApiError(413, f"the request body is larger than {self.max_body} bytes",
                             code="request_too_large")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await too_large.response()(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if not started:
                await too_large.response()(scope, receive, send)


def create_app(engines: dict[str, Engine], config: ServerSection, generation: GenerationSection,
               api_key: str | None = None) -> FastAPI:
    """The application over started engines (one per model id)."""
    app = FastAPI(title="kanitts", docs_url=None, redoc_url=None, openapi_url=None)
    formats = available_formats()
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return ApiError(exc.status_code, str(exc.detail), type_, headers=dict(exc.headers or {})).response()

    @app.get("/health")
    async def health():
        return {"status": "ok", "api_key_required": api_key is not None, "models": {
            name: {"queued": e.queued, "batches": len(e.stats.batch_rows)} for name, e in engines.items()}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_entry(name, e) for name, e in engines.items()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in engines:
            raise _unknown_model(model_id, engines)
        return _model_entry(model_id, engines[model_id])

    def _model_entry(name: str, engine: Engine) -> dict[str, Any]:
        return {
            "id": name, "object": "model", "created": created, "owned_by": "kanitts",
            "sample_rate": config.sample_rate or engine.sample_rate,
            "voices": list(engine.voices) if engine.voices else list(config.voices),
            "voice_sources": {name: voice.source for name, voice in engine.voices.items()},
            "default_voice": config.default_voice,
            "response_formats": list(formats), "max_input_chars": config.max_input_chars,
            "sampling": {"temperature": generation.temperature if generation.do_sample else 0.0,
                         "top_p": generation.top_p, "repetition_penalty": generation.repetition_penalty,
                         "max_new_tokens": generation.max_new_tokens},
        }

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        body = await request.body()
        try:
            raw = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "the request body must be a JSON object with model and input")
        try:
            req = SpeechRequest.model_validate(raw)
        except ValidationError as exc:
            raise _validation_error(exc.errors()) from None
        engine = engines.get(req.model)
        if engine is None:
            raise _unknown_model(req.model, engines)
        job, fmt = _job(req, engine, asyncio.get_running_loop())
        try:
            engine.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"too many requests waiting ({config.max_queue}); retry in {exc.retry_after} s",
                           "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except Stopped:
            raise ApiError(503, "the server is shutting down", "server_error", code="unavailable",
                           headers={"Retry-After": "5"}) from None
        return await _answer(request, job, engine, fmt, req.stream_format == "sse")

    def _job(req: SpeechRequest, engine: Engine, loop) -> tuple[Job, str]:
        if len(req.input) > config.max_input_chars:
            raise ApiError(400, f"input is {len(req.input)} characters; at most {config.max_input_chars}",
                           param="input", code="string_above_max_length")
        problem = text_problem(req.input)
        if problem:
            raise ApiError(400, f"input: {problem}", param="input", code="invalid_value")
        fmt = req.response_format or config.response_format
        if fmt not in formats:
            raise ApiError(400, f"response_format {fmt!r} is not one of {', '.join(formats)}",
                           param="response_format", code="invalid_value")
        if req.stream_format == "sse" and fmt not in STREAMED:
            raise ApiError(400, f"stream_format 'sse' needs response_format pcm or wav, not {fmt!r}",
                           param="stream_format", code="invalid_value")
        if req.speed != 1.0:
            raise ApiError(400, "speed: KaniTTS has no speaking-rate control (changing the playback rate would "
                           "change the pitch); send 1.0", param="speed", code="unsupported_value")
        if req.instructions:
            raise ApiError(400, "instructions: this model cannot follow style instructions; leave them out",
                           param="instructions", code="unsupported_value")
        limit = generation.max_new_tokens
        if req.max_new_tokens is not None and not (engine.tts.layout.min_new_tokens <= req.max_new_tokens <= limit):
            raise ApiError(400, f"max_new_tokens must lie in [{engine.tts.layout.min_new_tokens}, {limit}] "
                           "(the upper end is generation.max_new_tokens of inference_config.yaml)",
                           param="max_new_tokens", code="invalid_value")
        temperature = req.temperature if req.temperature is not None else (
            generation.temperature if generation.do_sample else 0.0)
        sampling = Sampling(
            do_sample=temperature > 0, temperature=temperature or 1.0,
            top_p=req.top_p if req.top_p is not None else generation.top_p,
            repetition_penalty=req.repetition_penalty or generation.repetition_penalty,
            max_new_tokens=req.max_new_tokens or limit, seed=req.seed,
        )
        pieces = split_text(req.input, config.max_piece_chars)
        silence = round(config.piece_silence_ms * engine.sample_rate / 1000)
        speaker, embedding = _voice(req.voice, engine)
        return Job(pieces, speaker, sampling, config.request_timeout_s, silence, loop, embedding), fmt

    def _voice(voice: str | None, engine: Engine) -> tuple[str | None, Any]:
        """The speaker prefix and the voice embedding (None: the model's default) of a request."""
        if voice is None or voice == "" or voice == "default":
            voice = config.default_voice
        if engine.voices and voice is not None:
            if voice not in engine.voices:
                raise ApiError(400, f"voice {voice!r} is not one of {', '.join(engine.voices)}",
                               param="voice", code="invalid_value")
            found = engine.voices[voice]
            return found.prefix, found.embedding
        if voice is None or voice == config.default_voice:
            return voice, None
        if config.voices:
            if voice not in config.voices:
                raise ApiError(400, f"voice {voice!r} is not one of {', '.join(config.voices)}",
                               param="voice", code="invalid_value")
        elif not VOICE_PATTERN.match(voice):
            raise ApiError(400, f"voice {voice!r} is not a speaker name (letters, digits, _ . -, at most 64)",
                           param="voice", code="invalid_value")
        return voice, None

    return _with_page(app, engines, config, api_key)


def _with_page(app: FastAPI, engines, config: ServerSection, api_key: str | None):
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=config.max_body_bytes)
    return app


# --- answering a speech request ------------------------------------------------------------------


async def _next(job: Job, request: Request) -> np.ndarray | Done:
    """The job's next item; the client leaving or the deadline passing cancels the job."""
    timeout = max(0.0, job.deadline - time.monotonic()) + 1.0
    get = asyncio.ensure_future(job.audio.get())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        finished, _ = await asyncio.wait({get, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if get in finished:
        return get.result()
    get.cancel()
    job.cancel()
    if gone in finished:
        return Done(cancelled=True)
    return Done(timed_out=True)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _failure(done: Done, timeout_s: float) -> ApiError | None:
    if done.error:
        return ApiError(500, done.error, "server_error", code="generation_failed")
    if done.timed_out:
        return ApiError(504, f"no audio within the request timeout ({timeout_s:g} s)", "server_error", code="timeout")
    if done.cancelled:
        return ApiError(499, "the request was cancelled", code="cancelled")
    return None


async def _answer(request: Request, job: Job, engine: Engine, fmt: str, sse: bool) -> Response:
    timeout_s = engine.config.request_timeout_s
    first = await _next(job, request)
    if isinstance(first, Done):
        problem = _failure(first, timeout_s) or ApiError(
            500, "the model produced no audio" + (f" ({'; '.join(first.problems)})" if first.problems else ""),
            "server_error", code="no_audio")
        return problem.response()
    rate = engine.config.sample_rate or engine.sample_rate
    headers = {"X-Sample-Rate": str(rate), "Cache-Control": "no-store"}
    resample = _Resampler(engine.sample_rate, rate)
    if fmt not in STREAMED:
        parts = [first]
        item = first
        while not isinstance(item, Done):
            item = await _next(job, request)
            if not isinstance(item, Done):
                parts.append(item)
        if problem := _failure(item, timeout_s):
            return problem.response()
        audio = np.concatenate([*map(resample, parts), resample.end()])
        return Response(encode_whole(audio, rate, fmt), media_type=MEDIA_TYPES[fmt], headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            prefix = wav_header(rate) if fmt == "wav" else b""
            item = first
            while not isinstance(item, Done):
                data = prefix + pcm16(resample(item))
                prefix = b""
                if data:
                    yield _sse_delta(data) if sse else data
                item = await _next(job, request)
            data = prefix + pcm16(resample.end())
            if data:
                yield _sse_delta(data) if sse else data
            if sse:
                problem = _failure(item, timeout_s)
                yield _sse_done(item, len(job.pieces)) if problem is None else _sse_error(problem)
        finally:
            job.cancel()  # the client left mid-stream (or all is sent: then this changes nothing)

    media = "text/event-stream" if sse else MEDIA_TYPES[fmt]
    return StreamingResponse(chunks(), media_type=media, headers=headers)


class _Resampler:
    """The codec's audio at the rate the server sends, chunk by chunk (soxr's stream resampler
    gives the same samples as resampling the whole)."""

    def __init__(self, source: int, target: int):
        self.stream = None
        if source != target:
            import soxr

            self.stream = soxr.ResampleStream(source, target, 1, dtype="float32")

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return audio if self.stream is None else self.stream.resample_chunk(audio)

    def end(self) -> np.ndarray:
        empty = np.zeros(0, np.float32)
        return empty if self.stream is None else self.stream.resample_chunk(empty, last=True)


def _sse_delta(data: bytes) -> bytes:
    event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
    return f"data: {json.dumps(event)}\n\n".encode()


def _sse_done(done: Done, pieces: int) -> bytes:
    usage = {"input_tokens": done.prompt_tokens, "output_tokens": done.generated_tokens,
             "total_tokens": done.prompt_tokens + done.generated_tokens}
    event = {"type": "speech.audio.done", "usage": usage, "pieces": pieces, "frames": done.frames,
             "problems": done.problems}
    return f"data: {json.dumps(event)}\n\n".encode()


def _sse_error(error: ApiError) -> bytes:
    event = {"type": "error", "error": {"message": error.message, "type": error.type, "param": error.param,
                                        "code": error.code}}
    return f"data: {json.dumps(event)}\n\n".encode()


def _validation_error(errors: list[dict[str, Any]]) -> ApiError:
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return ApiError(400, f"{param} is required", param=param, code="missing_required_parameter")
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"unknown parameter {param!r}", param=param, code="unknown_parameter")
    return ApiError(400, f"{param}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value")


def _unknown_model(name: str, engines: dict[str, Engine]) -> ApiError:
    return ApiError(404, f"model {name!r} is not served here; the models are: {', '.join(engines)}",
                    param="model", code="model_not_found")
