"""Releases: the folder and its layouts, the card, versions and changelog, checksums, withheld images."""
