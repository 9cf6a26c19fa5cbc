"""`kanitts serve`: load the models and serve them over HTTP (OpenAI's speech API and a page)."""

from __future__ import annotations

from pathlib import Path

from kanitts.config import load_configs
from kanitts.errors import UserError
from kanitts.files import is_hub_id
from kanitts.inference import KaniTTS


def model_ids(models: list[str]) -> dict[str, str]:
    """The id each model is served under (its folder name, or the Hub id) -> where it is."""
    ids: dict[str, str] = {}
    for where in models:
        name = where if is_hub_id(where) and not Path(where).exists() else Path(where).resolve().name
        if name in ids:
            raise UserError(f"two models would be served as {name!r} ({ids[name]} and {where}): rename a folder")
        ids[name] = where
    return ids


def run(*, models: list[str], config_dir: Path, host: str | None = None, port: int | None = None,
        codec: str | None = None, device: str | None = None) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"kanitts serve needs {exc.name}: pip install 'kanitts[serve]' (make setup installs it)"
        ) from None
    from kanitts.serving.server import Server, api_key_for, check_address, voice_clip_paths

    configs = load_configs(config_dir, kinds=("model", "inference"))
    server_cfg = configs.inference.server
    host = host or server_cfg.host
    api_key = api_key_for(server_cfg, host)  # before loading: refusing takes no minutes
    check_address(host, server_cfg.port if port is None else port)
    voice_clips = voice_clip_paths(server_cfg, config_dir)
    if not models:
        raise UserError("name a model to serve: kanitts serve --model checkpoints/<model_id>")
    loaded = {
        name: KaniTTS.from_pretrained(where, codec=codec, model_cfg=configs.model, inference_cfg=configs.inference,
                                      device=device)
        for name, where in model_ids(models).items()
    }
    server = Server(loaded, server_cfg, configs.inference.generation, host=host, port=port, api_key=api_key,
                    voice_clips=voice_clips)
    print(f"serving {', '.join(loaded)} on http://{host}:{server_cfg.port if port is None else port} "
          f"(page at /, OpenAI API at /v1{', API key required' if api_key else ''})", flush=True)
    server.run()
    return 0
