"""`python -m jisi_graph` runs the `jisi` command line."""

from jisi_graph.cli import main

main()
