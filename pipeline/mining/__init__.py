"""Mining: the tile kernel, partitions, candidates, thresholds, selection, plots."""
