"""``kanitts prepare``: recordings + transcripts -> the codec dataset that training reads.

From a project (the codec that ``model_config.yaml`` names, as the CLI does) use the recipe,
:func:`kanitts.recipes.prepare.run`. Code that holds its codec choice calls the component::

    from kanitts.prepare.options import CodecSpec, PrepareOptions
    from kanitts.prepare.pipeline import prepare_dataset

    result = prepare_dataset(PrepareOptions(input="data/alice", output="data/alice-nano"),
                             CodecSpec(kind="nanocodec", weights="path/or/hub-id"))

The modules, in the order a run uses them: ``options`` (every default), ``sources`` (inputs),
``cleaning`` (audio checks), ``encoding`` and ``shards`` (resumable encoding), ``assembly``
(merge and summary), ``output`` (locks and refusals), ``distributed`` (ranks), ``pipeline``
(the run). Nothing is re-exported here, so that ``kanitts.cli`` can read the options without
importing torch.
"""
