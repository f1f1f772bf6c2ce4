"""Training children: the shared training loop, executors, language models, data."""
