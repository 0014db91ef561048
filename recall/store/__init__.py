"""Published output: layout, atomic file operations, table writing, typed records, the commit
protocol, the run history and the reader API."""
