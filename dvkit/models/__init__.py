"""Model layer: bases, the built-in tiny base, DreamVideo adapters, injection, textual inversion."""
