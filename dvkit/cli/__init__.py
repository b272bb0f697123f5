"""The `dvkit` command line: each module parses options, calls the library and renders."""
