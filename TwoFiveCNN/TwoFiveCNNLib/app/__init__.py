"""Applications: the command line, the demo, background processes."""
