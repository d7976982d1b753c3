"""Recording programs to files and replaying them without a kernel."""
