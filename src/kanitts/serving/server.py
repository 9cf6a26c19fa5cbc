"""uvicorn around the application: in the foreground (``kanitts serve``) or in a thread (tests, benchmark)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

from kanitts.config import GenerationSection, ServerSection
from kanitts.errors import ConfigError, UserError
from kanitts.inference import KaniTTS
from kanitts.serving.engine import Engine


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_for(config: ServerSection, host: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key from ``config.api_key_env``; refuses a non-loopback address without one."""
    key = environ.get(config.api_key_env) or None
    if key is None and not is_loopback(host):
        raise UserError(
            f"listening on {host} lets other machines in: set an API key first "
            f"(export {config.api_key_env}=<a long random string>; clients send 'Authorization: Bearer <key>'), "
            "or listen on 127.0.0.1 (server.host in inference_config.yaml, --host)"
        )
    if key is not None and len(key) < 16:
        raise UserError(f"the API key in {config.api_key_env} has {len(key)} characters; use at least 16")
    return key


def check_address(host: str, port: int) -> None:
    """Refuses, before any model loads, a port out of range or an address uvicorn could not
    listen on (a port another server holds, a host name that is not this machine's): uvicorn
    finds out only after the models have loaded, and says so with a traceback or a log line."""
    where = "(--host / --port, or server.host / server.port in inference_config.yaml)"
    if not 0 <= port <= 65535:
        raise UserError(f"port {port} is not a port: give one from 0 to 65535 {where}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"cannot listen on {host!r}: {exc} {where}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            busy = " (is another server running there?)" if exc.errno == errno.EADDRINUSE else ""
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}{busy} {where}") from None


def voice_clip_paths(config: ServerSection, config_dir: Path | str) -> dict[str, Path]:
    """``server.voice_clips`` as files (relative to the config folder), each checked to be readable
    audio, so a wrong path stops the start before any model loads."""
    import soundfile as sf

    folder = Path(config_dir)
    problems, paths = [], {}
    for name, given in config.voice_clips.items():
        path = Path(given) if Path(given).is_absolute() else folder / given
        where = f"{folder / 'inference_config.yaml'}: server.voice_clips.{name}"
        if not path.is_file():
            problems.append(f"{where}: {path}: no such file")
            continue
        try:
            sf.info(str(path))
        except (OSError, RuntimeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            problems.append(f"{where}: {path}: cannot read it as audio ({exc})")
            continue
        paths[name] = path
    if problems:
        raise ConfigError(problems)
    return paths


class Server:
    """Engines for the loaded models, the application, and a uvicorn server for them."""

    def __init__(self, models: Mapping[str, KaniTTS], config: ServerSection, generation: GenerationSection,
                 host: str | None = None, port: int | None = None, api_key: str | None = None,
                 log_level: str = "info", voice_clips: Mapping[str, Path] | None = None):
        import uvicorn

        from kanitts.serving.app import create_app

        self.host = host or config.host
        self.engines = {name: Engine(tts, config, name, voice_clips).start() for name, tts in models.items()}
        self.app = create_app(self.engines, config, generation, api_key=api_key)
        self.uvicorn = uvicorn.Server(uvicorn.Config(
            self.app, host=self.host, port=config.port if port is None else port, log_level=log_level,
            timeout_keep_alive=5, timeout_graceful_shutdown=5,
        ))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.uvicorn.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def run(self) -> None:
        """Serve in the foreground until interrupted."""
        try:
            self.uvicorn.run()
        finally:
            self.stop_engines()

    def start(self) -> Server:
        """Serve from a thread; returns once the socket listens (port 0 picks a free port)."""
        self._thread = threading.Thread(target=self.uvicorn.run, name="kanitts-uvicorn", daemon=True)
        self._thread.start()
        while not self.uvicorn.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started listening")
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.stop_engines()

    def stop_engines(self) -> None:
        for engine in self.engines.values():
            engine.stop()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
