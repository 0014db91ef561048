"""Reading the interaction log: the window, files, row checks, and the prepared matrix coordinates."""
