"""EBR platform: shared plumbing (home folder, log schema, config, CLI)."""

__version__ = "0.1.0"
