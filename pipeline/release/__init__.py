"""Releases: the folder and its layouts, the card and its citation, versions and changelog, checksums, withheld
images (`withheld`: the standard-library fetch script shipped in a release) and their encoding."""
