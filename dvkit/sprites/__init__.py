"""The sprites world: a seeded clip generator, ground-truth metrics, the built-in `sprites` base
and `dvkit demo`."""
