from recall.cli import entry

entry()
