"""Storage: the SQLite database, its migrations and its single writer thread."""
