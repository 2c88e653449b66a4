"""The one interface clipblind's servers bind: the loopback (annotators reach Label Studio through an
SSH tunnel if remote; a private Ray instance never faces the network)."""

LOOPBACK = "127.0.0.1"
