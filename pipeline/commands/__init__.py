"""Commands people run on releases and the pipeline: verify, remove, tag, publish, status, bench."""
