"""OpenAIBackend against a local fault-injecting OpenAI-compatible server (no Ray, no model).

The server reads a directive from the start of each prompt (the last chat message, or the string prompt):
``ok``, ``429xK`` / ``500xK`` / ``slowxK`` / ``badjsonxK`` (fail the first K hits, then succeed),
``retryafter`` (one 429 with ``Retry-After: 0.4``), ``always500``, ``400``, ``echoauth`` (a 401 whose body
echoes the Authorization header), ``sleepMS`` (succeed after MS milliseconds). It counts hits per prompt and
the most requests in flight at once, and keeps every request's headers and body.
"""

from __future__ import annotations

import json
import pickle
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from psi_ray.backends import load_backend
from psi_ray.backends.base import Backend, SamplingParams
from psi_ray.backends.openai import OpenAIBackend
from psi_ray.errors import PsiRayError
from tests.conftest import run_cli
from tests.unit.test_cli_errors import assert_clean_error

SLOW_S = 2.0  # how long a "slow" request sleeps; the client's timeout in these tests is far below it
CLIENT_TIMEOUT = 1.0
SECRET = "sk-test-0123456789abcdef"


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0


class _Handler(BaseHTTPRequestHandler):
    state: _State  # set on the per-server subclass

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        if self.path.endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}))
        else:
            self._send(404, '{"error": "not found"}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        key = body["messages"][-1]["content"] if chat else body["prompt"]
        st = self.state
        with st.lock:
            st.hits[key] = hit = st.hits.get(key, 0) + 1
            st.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        self._counted = True
        try:
            self._answer(key, hit, body, chat)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a slow request
        finally:
            self._leave()

    def _leave(self):
        # Leave the in-flight count *before* the response goes out: once the client has it, it may send the
        # next request before this thread runs again.
        if getattr(self, "_counted", False):
            self._counted = False
            with self.state.lock:
                self.state.in_flight -= 1

    def _answer(self, key: str, hit: int, body: dict, chat: bool):
        directive = key.split(":", 1)[0]
        m = re.fullmatch(r"(429|500|slow|badjson)x(\d+)", directive)
        failing = m.group(1) if m and hit <= int(m.group(2)) else None
        if failing == "429":
            return self._send(429, '{"error": {"message": "rate limited"}}')
        if directive == "retryafter" and hit == 1:
            return self._send(429, '{"error": {"message": "slow down"}}', {"Retry-After": "0.4"})
        if failing == "500" or directive == "always500":
            return self._send(500, '{"error": {"message": "boom"}}')
        if failing == "slow":
            time.sleep(SLOW_S)
        if failing == "badjson":
            return self._send(200, '{"choices": [{"text": "trunc')
        if directive == "400":
            return self._send(400, '{"error": {"message": "bad request"}}')
        if directive == "echoauth":
            return self._send(401, json.dumps({"error": f"invalid key {self.headers.get('Authorization')}"}))
        if directive.startswith("sleep"):
            time.sleep(int(directive[5:]) / 1000)
        n = body.get("n", 1)
        texts = [f"echo:{key}#{i}" for i in range(n)]
        choices = [{"index": i, "finish_reason": "stop",
                    **({"message": {"role": "assistant", "content": t}} if chat else {"text": t})}
                   for i, t in enumerate(texts)]
        usage = {"prompt_tokens": 5, "completion_tokens": 3 * n + 1, "total_tokens": 5 + 3 * n + 1}
        self._send(200, json.dumps({"id": "x", "choices": choices[::-1], "usage": usage}))  # index order matters

    def _send(self, status: int, text: str, headers: dict | None = None):
        data = text.encode()
        self._leave()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _backend(server, **kw) -> OpenAIBackend:
    opts = dict(base_url=server.url, api_key_env="PSI_RAY_TEST_KEY", concurrency=8, max_retries=3,
                timeout=CLIENT_TIMEOUT, backoff=0.01)
    return OpenAIBackend("tiny", **(opts | kw))


def _chat(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


def test_registry_and_protocol():
    with pytest.raises(TypeError, match="unknown_option"):  # a misspelt option is never dropped silently
        load_backend("openai", "tiny", base_url="http://127.0.0.1:1/v1", unknown_option=1)
    backend = load_backend("openai", "tiny", base_url="http://127.0.0.1:1/v1")
    assert isinstance(backend, Backend)
    assert backend.name == "openai" and backend.model == "tiny"
    assert backend.resources == {"CPU": 0.1}


def test_transient_failures_are_retried_then_succeed(server):
    backend = _backend(server)
    prompts = [_chat("429x2:a"), "500x1:b", _chat("slowx1:c"), "badjsonx2:d", _chat("ok:e")]
    gens = backend.generate(prompts, GREEDY)
    backend.close()
    assert [g.error for g in gens] == [None] * 5
    assert [g.text for g in gens] == ["echo:429x2:a#0", "echo:500x1:b#0", "echo:slowx1:c#0",
                                      "echo:badjsonx2:d#0", "echo:ok:e#0"]
    assert server.hits == {"429x2:a": 3, "500x1:b": 2, "slowx1:c": 2, "badjsonx2:d": 3, "ok:e": 1}
    assert all(g.prompt_tokens == 5 and g.output_tokens == 4 and g.finish_reason == "stop" for g in gens)


def test_retry_after_is_honoured(server):
    backend = _backend(server)
    start = time.monotonic()
    gens = backend.generate(["retryafter:a"], GREEDY)
    backend.close()
    assert gens[0].error is None and server.hits["retryafter:a"] == 2
    assert time.monotonic() - start >= 0.4


def test_pickled_backend_works_without_a_live_client(server):
    backend = _backend(server)
    backend.generate(["ok:a"], GREEDY)
    copy = pickle.loads(pickle.dumps(backend))
    backend.close()
    assert copy._client is None
    assert copy.generate(["ok:b"], GREEDY)[0].text == "echo:ok:b#0"
    copy.close()


def test_permanent_failures_become_errors_on_their_rows(server):
    backend = _backend(server, max_retries=2)
    prompts = ["ok:a", "always500:b", _chat("ok:c"), _chat("400:d"), "slowx9:e", "ok:f"]
    gens = backend.generate(prompts, SamplingParams(n=2, max_tokens=8))
    backend.close()
    assert len(gens) == 12
    rows = [gens[i:i + 2] for i in range(0, 12, 2)]
    for i in (0, 2, 5):
        assert [g.error for g in rows[i]] == [None, None] and rows[i][0].text.startswith("echo:")
    for i in (1, 3, 4):
        assert all(g.text == "" and g.error for g in rows[i])
    assert "HTTP 500" in rows[1][0].error and "3 attempts" in rows[1][0].error
    assert "HTTP 400" in rows[3][0].error and "bad request" in rows[3][0].error
    assert "timeout" in rows[4][0].error
    assert all("\n" not in g.error for row in rows for g in row if g.error)
    # 5xx and timeouts: 1 + max_retries attempts; a 400 is never retried
    assert server.hits["always500:b"] == 3 and server.hits["slowx9:e"] == 3 and server.hits["400:d"] == 1


def test_order_preserved_under_out_of_order_completion(server):
    backend = _backend(server, concurrency=6)
    prompts = [f"sleep{(12 - i) * 15}:p{i}" if i % 2 else _chat(f"sleep{(12 - i) * 15}:p{i}") for i in range(12)]
    gens = backend.generate(prompts, GREEDY)
    backend.close()
    assert [g.text for g in gens] == [f"echo:sleep{(12 - i) * 15}:p{i}#0" for i in range(12)]


def test_n_samples_per_prompt_are_consecutive_and_share_usage(server):
    backend = _backend(server)
    gens = backend.generate([_chat("ok:x"), "ok:y"], SamplingParams(n=3, max_tokens=8, seed=7, stop=["\n"]))
    backend.close()
    assert [g.text for g in gens] == [f"echo:ok:{p}#{i}" for p in "xy" for i in range(3)]
    # 3*3+1 = 10 completion tokens over 3 choices: 4, 3, 3
    assert [g.output_tokens for g in gens] == [4, 3, 3, 4, 3, 3]
    assert {r["body"]["n"] for r in server.requests} == {3} and len(server.requests) == 2
    chat_req, text_req = sorted(server.requests, key=lambda r: r["path"])
    assert chat_req["path"] == "/v1/chat/completions" and text_req["path"] == "/v1/completions"
    assert chat_req["body"]["messages"] == _chat("ok:x") and text_req["body"]["prompt"] == "ok:y"
    assert chat_req["body"] | {"messages": None} == {"model": "tiny", "temperature": 0.7, "top_p": 0.95,
                                                     "max_tokens": 8, "n": 3, "seed": 7, "stop": ["\n"],
                                                     "messages": None}


def test_optional_params_omitted(server):
    backend = _backend(server)
    backend.generate(["ok:a"], GREEDY)
    backend.close()
    body = server.requests[0]["body"]
    assert "seed" not in body and "stop" not in body and body["temperature"] == 0.0


def test_bearer_key_sent_but_never_shown(server, monkeypatch):
    monkeypatch.setenv("PSI_RAY_TEST_KEY", SECRET)
    backend = _backend(server)
    gens = backend.generate(["ok:a", "echoauth:b"], GREEDY)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert gens[0].error is None
    assert gens[1].error and "HTTP 401" in gens[1].error and "invalid key" in gens[1].error
    assert SECRET not in gens[1].error
    assert SECRET not in repr(backend) and SECRET not in str(backend)
    assert "PSI_RAY_TEST_KEY" in repr(backend)
    backend.close()


def test_no_authorization_header_without_key(server, monkeypatch):
    monkeypatch.delenv("PSI_RAY_TEST_KEY", raising=False)
    backend = _backend(server)
    backend.generate(["ok:a"], GREEDY)
    backend.close()
    assert "Authorization" not in server.requests[0]["headers"]


def test_concurrency_bound_respected(server):
    backend = _backend(server, concurrency=3)
    gens = backend.generate([f"sleep100:{i}" for i in range(12)], GREEDY)
    backend.close()
    assert all(g.error is None for g in gens)
    assert 2 <= server.max_in_flight <= 3


def test_check_lists_models_and_rejects_unknown(server):
    assert _backend(server).check() == ["tiny"]
    with pytest.raises(PsiRayError, match="model 'other' is not served .* it serves: tiny"):
        OpenAIBackend("other", base_url=server.url).check()


def test_check_unreachable_endpoint_raises_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1", timeout=1.0)
    with pytest.raises(PsiRayError) as info:
        backend.check()
    message = str(info.value)
    assert message.startswith(f"cannot reach OpenAI-compatible endpoint at http://127.0.0.1:{port}/v1/models: ")
    assert "\n" not in message
    backend.close()


def test_unreachable_endpoint_in_generate_is_data_not_exception():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01)
    gens = backend.generate(["a", _chat("b")], SamplingParams(n=2))
    backend.close()
    assert len(gens) == 4 and all(g.text == "" and "connection error" in g.error for g in gens)


# -- the key travels only where it is safe: https, this machine, or where the job says so --------------------

REMOTE_HTTP = "http://10.255.255.1:9/v1"  # unroutable: a request would hang until its timeout


def _own_address() -> str | None:
    """This machine's non-loopback IPv4 address (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.fixture
def remote_server():
    """The fault-injecting server on every interface, reached through a non-loopback address."""
    ip = _own_address()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    state = _State()
    httpd = ThreadingHTTPServer(("0.0.0.0", 0), type("Handler", (_Handler,), {"state": state}))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.url = f"http://{ip}:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_key_refused_for_plain_http_to_another_host(monkeypatch):
    monkeypatch.setenv("PSI_RAY_TEST_KEY", SECRET)
    start = time.monotonic()
    with pytest.raises(PsiRayError) as info:
        OpenAIBackend("tiny", base_url=REMOTE_HTTP, api_key_env="PSI_RAY_TEST_KEY")
    message = str(info.value)
    assert time.monotonic() - start < 1.0, "refused before any connection attempt"
    assert "refusing to send the API key from $PSI_RAY_TEST_KEY over plain http to 10.255.255.1" in message
    assert "allow_insecure_key: true" in message and SECRET not in message and "\n" not in message
    # the same base_url without a key, or over https, is fine (nothing secret travels in clear)
    OpenAIBackend("tiny", base_url="https://10.255.255.1:9/v1", api_key_env="PSI_RAY_TEST_KEY").close()
    monkeypatch.delenv("PSI_RAY_TEST_KEY")
    OpenAIBackend("tiny", base_url=REMOTE_HTTP, api_key_env="PSI_RAY_TEST_KEY").close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://127.9.9.9/v1", "http://localhost:1/v1",
                                 "http://[::1]:8000/v1", "https://api.example.com/v1"])
def test_key_allowed_for_loopback_and_https(monkeypatch, url):
    monkeypatch.setenv("PSI_RAY_TEST_KEY", SECRET)
    OpenAIBackend("tiny", base_url=url, api_key_env="PSI_RAY_TEST_KEY").close()


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1", "http:///v1", ""])
def test_base_url_must_be_http(url):
    with pytest.raises(PsiRayError, match="is not an http:// or https:// URL"):
        OpenAIBackend("tiny", base_url=url)


def test_key_reaches_a_remote_host_only_when_the_job_allows_it(remote_server, monkeypatch):
    monkeypatch.setenv("PSI_RAY_TEST_KEY", SECRET)
    with pytest.raises(PsiRayError, match="refusing to send the API key"):
        _backend(remote_server)
    assert remote_server.requests == []
    backend = _backend(remote_server, allow_insecure_key=True)
    assert backend.generate(["ok:a"], GREEDY)[0].error is None
    backend.close()
    assert remote_server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_a_worker_with_a_key_in_its_env_refuses_too(monkeypatch):
    """Built (and pickled to a Ray worker) without a key, the backend checks again where the key appears."""
    monkeypatch.delenv("PSI_RAY_TEST_KEY", raising=False)
    built = OpenAIBackend("tiny", base_url=REMOTE_HTTP, api_key_env="PSI_RAY_TEST_KEY")
    copy = pickle.loads(pickle.dumps(built))
    monkeypatch.setenv("PSI_RAY_TEST_KEY", SECRET)
    start = time.monotonic()
    with pytest.raises(PsiRayError, match="refusing to send the API key"):
        copy.generate(["ok:a"], GREEDY)
    assert time.monotonic() - start < 1.0


def test_cli_generate_refuses_an_insecure_key():
    res = run_cli("generate", "--backend", "openai", "--model", "m", "--base-url", REMOTE_HTTP, "hi",
                  env={"OPENAI_API_KEY": SECRET}, timeout=60)
    assert_clean_error(res, "refusing to send the API key from $OPENAI_API_KEY over plain http to "
                       "10.255.255.1")
    assert res.returncode == 2 and SECRET not in res.stdout + res.stderr


def test_eval_scores_the_model_it_is_asked_for_if_served(server):
    """``psi-ray eval ENDPOINT --model ID`` (an adapter served beside its base): the id if the endpoint lists it,
    its first model when none is asked, one clear line otherwise."""
    from psi_ray.evaluate.run import served_name

    assert served_name(server.url, None) == served_name(server.url, None, "tiny") == "tiny"
    with pytest.raises(PsiRayError, match="does not serve 'tuned'; it serves tiny"):
        served_name(server.url, None, "tuned")
