"""The bodies of migconform's subcommands, one module per group; harness.cli builds the parser and
dispatches to them, so a command's code can be read (and tested) without the argparse around it."""
