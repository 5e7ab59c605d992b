"""A real HTTP server on 127.0.0.1 that serves the facility portal API from fixture data.

``mode`` decides how it behaves: ``ok``; ``401-once`` (the first token it
issues is refused with 401 when used, as when a token expires); ``timeout`` (no
answer for longer than the client waits); ``bad-json``; ``500``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VISITS = {
    "1": [
        {
            "epn": "30001a",
            "start_time": "2026-11-20T09:00:00+11:00",
            "end_time": "2026-11-21T09:00:00+11:00",
            "principal_scientist": {
                "first_names": "Ada",
                "last_name": "Lovelace",
                "email": "ada@uni.example",
            },
            "data_scientists": [
                {"first_names": "Grace", "last_name": "Hopper", "email": "grace@uni.example"},
                {"first_names": "Alan", "last_name": "Turing", "email": "alan@uni.example"},
            ],
        },
        {
            "epn": "30002b",
            "start_time": "2026-11-22T09:00:00Z",
            "end_time": "2026-11-22T21:00:00Z",
            "principal_scientist": {
                "first_names": "Rosalind",
                "last_name": "Franklin",
                "email": "rosalind@uni.example",
            },
            "data_scientists": [],
        },
    ]
}
CLIENT = ("asynchy-client", "client-secret")
LOGIN = ("beamline-user", "portal-secret")


class PortalServer:
    def __init__(self, mode: str = "ok", *, delay: float = 5.0) -> None:
        self.mode = mode
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.tokens_issued = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                auth = self.headers.get("Authorization", "")
                server.requests.append(
                    {"method": "POST", "path": self.path, "form": form, "auth": auth}
                )
                if self.path != "/api/v1/oauth/token":
                    return self._answer(404, b"{}")
                client = base64.b64decode(auth.removeprefix("Basic ")).decode() if auth else ""
                login = (form.get("username", [""])[0], form.get("password", [""])[0])
                if (
                    client != ":".join(CLIENT)
                    or login != LOGIN
                    or form.get("grant_type") != ["password"]
                ):
                    return self._answer(401, b'{"error": "invalid_grant"}')
                server.tokens_issued += 1
                token = f"token-{server.tokens_issued}"
                self._answer(200, json.dumps({"data": {"access_token": token}}).encode())

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                server.requests.append(
                    {
                        "method": "GET",
                        "path": url.path,
                        "query": query,
                        "auth": self.headers.get("Authorization", ""),
                    }
                )
                parts = url.path.strip("/").split("/")
                if (
                    parts[:3] != ["api", "v1", "equipment"]
                    or len(parts) != 5
                    or parts[4] != "visits"
                ):
                    return self._answer(404, b"{}")
                if server.mode == "timeout":
                    time.sleep(server.delay)
                    return self._answer(200, b'{"data": {"visits": []}}')
                if server.mode == "500":
                    return self._answer(500, b"internal error")
                if server.mode == "bad-json":
                    return self._answer(200, b"<html>maintenance</html>", "text/html")
                token = query.get("access_token", [""])[0]
                bearer = self.headers.get("Authorization", "")
                if bearer.startswith("Bearer "):  # an OAuth2 resource server takes either
                    token = bearer.removeprefix("Bearer ")
                if not token.startswith("token-"):
                    return self._answer(401, b'{"error": "no token"}')
                if server.mode == "401-once" and token == "token-1":  # the first token has expired
                    return self._answer(401, b'{"error": "token expired"}')
                visits = VISITS.get(parts[3], [])
                self._answer(200, json.dumps({"data": {"visits": visits}}).encode())

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (the timeout test) is no news

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def config(self, **extra: Any) -> dict[str, Any]:
        entry = {
            "id": 1,
            "username": LOGIN[0],
            "password": LOGIN[1],
            "client_name": CLIENT[0],
            "client_password": CLIENT[1],
        }
        return {"base_url": self.url, "equipment": [entry], **extra}

    def start(self) -> PortalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
