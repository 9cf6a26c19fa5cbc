"""kanitts: fine-tune LLM-based TTS models that speak through discrete codec tokens."""

__version__ = "0.1.0"
