"""Pure array machinery of the candidate kernel: state types, packed keys, rows, search, blend."""
