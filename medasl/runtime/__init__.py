"""The runtime: the content-addressed result cache and file digests it keys on."""
