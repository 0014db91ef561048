"""Helpers shared by the test modules: projects and specs, the CLI as a real process, what a
job folder holds, the one-line failure checks, inputs written in many shapes."""
