"""The network and its artifacts: the denoiser (:mod:`.modeling`, settings in :mod:`.config`),
the tokenizer (:mod:`.tokenization`), model folders (:mod:`.folder`), what a generation call
holds fixed (:mod:`.template`, :mod:`.conditional`), devices and precision (:mod:`.devices`),
and :class:`~textdiff.models.pipeline.TextDiffusionPipeline` (:mod:`.pipeline`)."""
