"""Data to try the pipeline on: a synthetic log generator and the public data sets."""
