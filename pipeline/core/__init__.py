"""The shared ground: tables, params machinery, atomic writes, reports, errors, the nine patterns, the model hub."""
