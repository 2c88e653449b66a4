"""Vision-language models: backends, answer scoring, the blind gate's rules."""
