"""`kanitts serve`: an OpenAI-compatible speech server over :class:`kanitts.inference.KaniTTS`.

- ``text``: long texts split at sentence and clause boundaries into pieces the model can say
- ``generation``: per-row sampling, stopping and the streamer that turns tokens into audio chunks
- ``engine``: the queue and the dynamic batcher (one worker thread per loaded model)
- ``formats``: audio bytes for each ``response_format``
- ``app``: the FastAPI application (``/v1/audio/speech``, ``/v1/models``, ``/health``, the page)
- ``server``: uvicorn around it, in the foreground or in a thread (tests, benchmark)

The FastAPI and uvicorn imports live in ``app`` and ``server`` only (the ``serve`` extra).
"""
