"""Label Studio side of clipblind: labeling configs, guidelines, server launcher, push, pull,
import, verification and adjudication."""
