"""Command-line utilities: ``export_safetensors`` (training checkpoint -> released weights layout)
and ``dump_dataset`` (audio folder -> CSV of files for training). Run with ``python -m``."""
