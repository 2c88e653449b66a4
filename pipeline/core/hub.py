"""The model hub: its host and whether it answers (offline runs never wait on it)."""

from __future__ import annotations

import os
import socket
import threading

HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the model hub can be opened within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own: run the probe in a thread and stop waiting.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
