"""Training of the Kanade tokenizer with Lightning: data (data.py), the LightningModule
(pipeline.py) and the ``kanade-train`` entry point (cli.py)."""
