"""waste-pipeline: photograph an item, learn how to throw it away.

The pipeline (vision -> rules -> answer -> store) is written once, as async code in
``waste_pipeline._async``; ``waste_pipeline._sync`` is generated from it by ``nox -s generate``.
Use :class:`AsyncScanPipeline` under asyncio and :class:`ScanPipeline` everywhere else
(threads, gevent).
"""
