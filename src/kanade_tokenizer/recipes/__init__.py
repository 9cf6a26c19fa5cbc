"""The Kanade jobs a user starts, one module a job: :mod:`~.encode`, :mod:`~.decode`,
:mod:`~.convert` (``kanade <job>``; :mod:`kanade_tokenizer.training.cli` is ``kanade-train``).

Each exposes ``run(...) -> int`` taking what a user gives (paths, model id, flags): it checks the
inputs before any work, loads the model, calls the components, prints a summary and returns the
exit code; ``kanade_tokenizer.cli`` only parses arguments and calls it. The functions doing the
work (``encode_files``, ``decode_files``, ``convert_voice``) take loaded objects and are what
Python callers and tests use. :mod:`~.common` holds what the jobs share.
"""
