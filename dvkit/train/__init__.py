"""Training of subject and motion adapters: data loading, caching and the training loops."""
