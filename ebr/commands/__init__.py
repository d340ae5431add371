"""One module per `ebr` subcommand; each exposes a click command registered in ebr/cli.py."""
