"""One module per benchmark; each is registered by name in ``vlaser.eval.benchmark.REGISTRY``."""
