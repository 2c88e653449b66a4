"""Label Studio: the local server, its accounts, and the REST client."""
