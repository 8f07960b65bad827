"""The OpenAI gateway on the app's own port, driven by the real `openai` client: the real app (st.App under
uvicorn), a real worker, a real serve job on the tiny model, accounts made with the real CLI, and a
fake OpenAI server standing in for another student's and the instructor's servers."""
import urllib.error
import urllib.request

import openai
import pytest

from backend.access import apikeys, users
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import app_healthy, cli, endpoint_of, free_port, start_app, start_worker, stop, wait_for
from tests.fixtures.fake_openai import KEY, FakeOpenAI

pytestmark = pytest.mark.slow


@pytest.fixture
def klass(home, monkeypatch, tiny_model):
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    monkeypatch.setenv("WORKBENCH_CPU_SLOTS", "3")              # ann's server and two running placeholder jobs
    monkeypatch.setenv("WORKBENCH_API_RATE_PER_MIN", "8")
    for name, role in (("ann", "student"), ("bob", "student"), ("teach", "instructor")):
        assert cli(home, "users", "add", name, "--role", role).returncode == 0
    open_store(home).put("model", "tiny", str(tiny_model), {"source": "test"}, owner="ann")
    worker, fake = start_worker(home), FakeOpenAI()
    port = free_port()
    app = start_app(home, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: app_healthy(url), 60, 0.3, "the app to answer")
        yield url, fake
    finally:
        fake.close()
        stop(app)
        stop(worker)


def placeholder(home, owner: str, name: str, fake) -> None:
    """A running job of ``owner`` serving ``name`` from the fake server (registered as jobs/serve.py does)."""
    job = queue.submit("sleepy", {"steps": 5000, "interval_s": 0.2}, owner=owner, home=home)
    wait_for(lambda: queue.get(job, home, by=users.OPERATOR).state == "running", 60, 0.2, f"{owner}'s job to run")
    open_store(home).put("endpoint", name, str(home), {"url": fake.url + "/v1", "model": "fake-model", "api_key": KEY,
                                                       "engine": "transformers", "device": "cpu", "job_id": job},
                         job_id=job, owner=owner)


def test_a_students_key_reaches_their_own_and_the_class_s_models_only(home, klass):
    url, fake = klass
    ann_job = queue.submit("serve", {"model": "tiny", "name": "ann-tiny"}, owner="ann", home=home)
    ours = endpoint_of(home, ann_job, timeout=240)
    placeholder(home, "bob", "bob-private", fake)
    placeholder(home, "teach", "class-model", fake)
    key = apikeys.create("laptop", by=users.acting("ann", home=home), home=home)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)

    assert sorted(m.id for m in client.models.list()) == ["ann-tiny", "class-model"]
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="ann-tiny", stream=True, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]) if c.choices]
    assert len(pieces) >= 2 and "".join(pieces)                 # streamed through, chunk by chunk
    answer = client.chat.completions.create(model="class-model", messages=[{"role": "user", "content": "Hello"}])
    assert answer.choices[0].message.content.startswith("fake-model answer") and answer.model == "class-model"
    with pytest.raises(openai.NotFoundError) as e:              # another student's server: as if it didn't exist
        client.chat.completions.create(model="bob-private", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found" and missing.value.status_code == e.value.status_code == 404
    assert fake.requests[-1]["model"] == "fake-model" and len(fake.requests) == 1    # bob's got nothing

    def laptop() -> dict:
        return next(r for r in apikeys.listed(by=users.acting("ann", home=home), home=home) if r["name"] == "laptop")
    wait_for(lambda: laptop()["requests"] == 5, 10, 0.1, "every request to be counted")   # the stream's at its end
    row = laptop()
    assert row["tokens"] >= 2 and row["last_used_at"]
    assert [r["name"] for r in apikeys.listed(by=users.acting("bob", home=home), home=home)] == []
    assert "laptop" in [r["name"] for r in apikeys.listed(by=users.acting("teach", home=home), home=home)]

    # the servers' own keys never reach the student: not in any answer, not in the login page
    seen = [client.models.with_raw_response.list().text,
            client.chat.completions.with_raw_response.create(
                model="ann-tiny", max_tokens=4, messages=[{"role": "user", "content": "Hi"}]).text,
            urllib.request.urlopen(f"{url}/auth/login").read().decode()]
    assert ours["api_key"] and not any(ours["api_key"] in s or KEY in s for s in seen)
    assert str(home) not in "".join(seen)                       # nor the servers' folders (model ids are names)

    # past the key's rate limit: 429 in the OpenAI shape; another key of hers is not affected
    burst = openai.OpenAI(base_url=f"{url}/v1", api_key=apikeys.create("burst", by=users.acting("ann", home=home), home=home),
                          max_retries=0)
    for _ in range(8):
        burst.models.list()
    with pytest.raises(openai.RateLimitError):
        burst.models.list()
    assert client.models.list()

    # a revoked key, and every key of a disabled account, stop working at once
    apikeys.revoke(row["id"], by=users.acting("teach", home=home), home=home)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    again = openai.OpenAI(base_url=f"{url}/v1", api_key=apikeys.create("again", by=users.acting("ann", home=home), home=home), max_retries=0)
    assert again.models.list()
    users.disable("ann", home=home)
    with pytest.raises(openai.AuthenticationError):
        again.models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wbk-made-up", max_retries=0).models.list()
    actions = [r["action"] for r in users.audit_log(home=home)]
    assert actions.count("api_key_created") == 3 and actions.count("api_key_revoked") == 1


def test_login_route_sets_an_httponly_cookie_and_logout_ends_it(home, klass):
    url, _ = klass
    password = users.reset("bob", home=home)
    page = urllib.request.Request(f"{url}/jobs?job=1", headers={"Accept": "text/html"})
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:          # a page without a session: to the login form first
        opener.open(page)
    assert e.value.code == 303 and e.value.headers["location"] == "/auth/login?next=/jobs%3Fjob%3D1"
    form = f"name=bob&password={password}".encode()
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"{url}/auth/login?next=/jobs", data=form))
    cookie = e.value.headers["set-cookie"]
    assert e.value.code == 303 and e.value.headers["location"].startswith("/jobs?lang=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert users.session_user(token, home=home).name == "bob"
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"{url}/auth/logout", headers={"Cookie": f"{users.COOKIE}={token}"}))
    assert users.session_user(token, home=home) is None and "Max-Age=0" in e.value.headers["set-cookie"]
    with pytest.raises(urllib.error.HTTPError) as e:          # wrong password: the form again, with the reason
        opener.open(urllib.request.Request(f"{url}/auth/login", data=b"name=bob&password=nope"))
    assert e.value.code == 401 and "Wrong name or password." in e.value.read().decode()
    with pytest.raises(urllib.error.HTTPError) as e:          # never sent to another site after login
        opener.open(urllib.request.Request(f"{url}/auth/login?next=//evil.example/", data=form))
    assert e.value.headers["location"].startswith("/?lang=")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
