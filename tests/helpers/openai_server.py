"""A minimal OpenAI-compatible chat-completions server on 127.0.0.1, backed by a local transformers model.

usage: python -m tests.helpers.openai_server MODEL_DIR PORT_FILE LOG_FILE

It binds an ephemeral port on 127.0.0.1, writes the port to PORT_FILE, and answers
POST /v1/chat/completions with the model's greedy reply. Each request's image bytes are
decoded from the data URL and their sha256 appended to LOG_FILE, so a test can check that
every request carried the image it was about. `chat_handler` serves any reply function
(tests/helpers/journey_world.py scripts one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from pipeline.params import VlmParams
from pipeline.vlm.backends import TransformersBackend

Answer = Callable[[dict[str, Any], str, bytes | None], str]


def chat_handler(answer: Answer) -> type[BaseHTTPRequestHandler]:
    """A request handler for POST /v1/chat/completions that replies `answer(body, prompt, image bytes)`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt, image = "", None
            for part in body["messages"][-1]["content"]:
                if part["type"] == "text":
                    prompt += part["text"]
                elif part["type"] == "image_url":
                    image = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            reply = answer(body, prompt, image)
            data = json.dumps({"object": "chat.completion", "model": body.get("model"),
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                            "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def serve(model_dir: str, port_file: str, log_file: str) -> None:
    backend = TransformersBackend(VlmParams(backend="transformers", model=model_dir, max_new_tokens=8))

    def answer(body: dict[str, Any], prompt: str, image: bytes | None) -> str:
        with open(log_file, "a") as log:
            log.write(json.dumps({"image_sha256": hashlib.sha256(image).hexdigest() if image else None,
                                  "temperature": body.get("temperature"), "model": body.get("model")}) + "\n")
        return backend.ask(prompt, image)

    server = HTTPServer(("127.0.0.1", 0), chat_handler(answer))
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    serve(*sys.argv[1:4])
