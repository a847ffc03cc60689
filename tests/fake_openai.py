"""A real HTTP server speaking the OpenAI chat-completions protocol, with scripted replies, for tests.

Each POST /v1/chat/completions takes the next action of `script` (a list), or, when the script is
empty, asks `responder(body, n)`; an action is a dict built by `ok`, `status`, `drop`, `raw` (any body,
e.g. an HTML page or broken JSON, with status 200), `body` (any JSON object, e.g. `choices: []` or an
error object, with status 200), `trickle` (a completion sent a few bytes at a time) or `huge`. Every request
body (and its Authorization header) is recorded in `requests`, in arrival order, and the largest
number of requests in flight at once is kept in `max_in_flight`.
"""

from __future__ import annotations
import json, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def ok(content, finish_reason: str = "stop", delay: float = 0.0, usage=(20, 10)) -> dict:
    "A 200 reply with `content` (a string, or an object sent as its JSON)."
    if not isinstance(content, str):
        content = json.dumps(content)
    return {"kind": "ok", "content": content, "finish_reason": finish_reason, "delay": delay, "usage": usage}


def status(code: int, retry_after=None, message: str = "scripted error", delay: float = 0.0) -> dict:
    "An HTTP error reply, optionally with a Retry-After header."
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return {"kind": "status", "code": code, "headers": headers, "message": message, "delay": delay}


def drop(delay: float = 0.0) -> dict:
    "Close the connection without answering (a connection error for the client)."
    return {"kind": "drop", "delay": delay}


def raw(data, code: int = 200, content_type: str = "text/html", delay: float = 0.0) -> dict:
    "A reply with exactly these bytes (str or bytes) as its body."
    if isinstance(data, str):
        data = data.encode()
    return {"kind": "raw", "code": code, "data": data, "content_type": content_type, "delay": delay}


def body(obj, code: int = 200, delay: float = 0.0) -> dict:
    "A reply whose body is the JSON of `obj` (not necessarily a completion)."
    return raw(json.dumps(obj), code, "application/json", delay)


def trickle(content, interval: float = 0.25, chunk: int = 4, delay: float = 0.0) -> dict:
    "A well-formed completion sent `chunk` bytes every `interval` seconds (each socket read is quick)."
    return {**ok(content, delay=delay), "kind": "trickle", "interval": interval, "chunk": chunk}


def huge(n_bytes: int, delay: float = 0.0) -> dict:
    "A well-formed completion whose content is `n_bytes` characters of junk."
    return ok("x" * n_bytes, delay=delay)


def echo_key(code: int = 401) -> dict:
    "An error whose message echoes the Authorization header it received (as some servers do)."
    return {**status(code), "echo_auth": True}


class FakeOpenAI:
    "Scripted OpenAI-compatible server on 127.0.0.1 (a free port); use as a context manager."

    def __init__(self, script=None, responder=None):
        self.script, self.responder = list(script or []), responder
        self.requests, self.headers = [], []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *a):
                pass

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "not_found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                with fake._lock:
                    n = len(fake.requests)
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    act = fake.script.pop(0) if fake.script else None
                try:
                    if act is None:
                        act = fake.responder(body, n) if fake.responder else status(400, message="fake server: script exhausted")
                    time.sleep(act.get("delay", 0))
                    if act["kind"] == "drop":
                        self.close_connection = True
                        self.connection.close()
                        return
                    if act["kind"] == "status":
                        msg = act["message"]
                        if act.get("echo_auth"):
                            msg = (
                                f"Incorrect API key provided: {self.headers.get('Authorization', '')[7:]}; you sent "
                                f"Authorization: {self.headers.get('Authorization', '')}"
                            )
                        return self._send(
                            act["code"], {"error": {"message": msg, "type": "scripted", "code": None}}, act["headers"]
                        )
                    if act["kind"] == "raw":
                        self.send_response(act["code"])
                        self.send_header("Content-Type", act["content_type"])
                        self.send_header("Content-Length", str(len(act["data"])))
                        self.end_headers()
                        self.wfile.write(act["data"])
                        self.wfile.flush()
                        return
                    pt, ct = act["usage"]
                    reply = {
                        "id": f"chatcmpl-{n}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake-model"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": act["finish_reason"],
                                "logprobs": None,
                                "message": {"role": "assistant", "content": act["content"]},
                            }
                        ],
                        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                    }
                    if act["kind"] != "trickle":
                        return self._send(200, reply)
                    data = json.dumps(reply).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.flush()
                    for i in range(0, len(data), act["chunk"]):
                        self.wfile.write(data[i : i + act["chunk"]])
                        self.wfile.flush()
                        time.sleep(act["interval"])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # manual use: serve a constant reply
    import sys

    with FakeOpenAI(responder=lambda body, n: ok({"answer": "fake"})) as srv:
        print(srv.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            sys.exit(0)
