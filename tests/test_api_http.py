"""The HTTP API over real HTTP (uvicorn on a free port) with no worker running: what a client sees
for good and bad submissions, errors, auth, idempotency, a full queue, cancel, events, health,
metrics, docs and the web page. The tests with worker processes are in test_api_service.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from api_support import LiveApi, data_url, error_of, png_bytes, sse_events, wait_for
from conftest import free_port

from wanserve.settings import load_settings
from wanserve.tasks import GroupState, TaskStore

MAX_UPLOAD = 300_000
TINY = {"image_size": "64*64", "num_frames": 5, "infer_steps": 2}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("api-http")
    server = LiveApi(load_settings(data_dir=data, max_upload_bytes=MAX_UPLOAD, max_concurrent_tasks=500,
                                   fetch_timeout=3)).start()
    yield server
    server.stop()


@pytest.fixture
def client(api):
    with api.client() as c:
        yield c


def submit(client: httpx.Client, **fields) -> dict:
    response = client.post("/submit", json={**TINY, "prompt": "a red fox", **fields})
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------ submissions
def test_submit_applies_the_original_defaults(client):
    status = client.post("/submit", json={"prompt": "A cat walks on the grass"}).json()
    assert status["status"] == "queued" and status["task"] == "t2v" and status["queue_position"] >= 1
    request = status["request"]
    assert (request["size"], request["num_frames"], request["infer_steps"], request["guidance_scale"]) == (
        "512*512", 41, 30, 3.0)
    assert status["adjustments"] == [] and status["progress"] == 0 and status["video_url"] is None
    created = status["created_at"]
    assert created.endswith("Z") and time.time() - _epoch(created) < 30
    assert client.get(f"/status/{status['task_id']}").json()["request"] == request


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_sizes_and_frames_are_snapped_and_reported(client):
    status = submit(client, image_size="500*300", num_frames=40)
    assert status["request"]["size"] == "512*288" and status["request"]["num_frames"] == 41
    adjustments = {a["field"]: a for a in status["adjustments"]}
    assert adjustments["size"]["requested"] == "500*300" and adjustments["size"]["used"] == "512*288"
    assert "32" in adjustments["size"]["reason"]
    assert (adjustments["num_frames"]["requested"], adjustments["num_frames"]["used"]) == (40, 41)
    again = client.get(f"/status/{status['task_id']}").json()
    assert again["adjustments"] == status["adjustments"]


def test_the_task_type_comes_from_the_inputs(client, api):
    assert submit(client)["task"] == "t2v"
    status = submit(client, image_url=data_url(png_bytes()))
    assert status["task"] == "i2v" and status["request"]["inputs"] == ["image"]
    stored = list((api.settings.results_path / status["task_id"] / "inputs").iterdir())
    assert len(stored) == 1 and stored[0].read_bytes() == png_bytes()


def test_multipart_submit_as_the_web_page_sends_it(client):
    response = client.post("/submit", data={"prompt": "from the page", "image_size": "64*64", "num_frames": "5",
                                            "infer_steps": "2", "guidance_scale": "4.5", "seed": "7",
                                            "resize_mode": "pad", "task": ""},
                           files={"image": ("cat.png", png_bytes(), "application/octet-stream")})
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["task"] == "i2v" and status["prompt"] == "from the page"
    assert status["request"]["guidance_scale"] == 4.5 and status["request"]["seed"] == 7
    assert status["request"]["resize_mode"] == "pad"


def test_json_submission_answers_fast(client):
    client.post("/submit", json={**TINY, "prompt": "warm-up"})
    times = []
    for i in range(10):
        start = time.perf_counter()
        assert client.post("/submit", json={**TINY, "prompt": f"latency {i}"}).status_code == 200
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"\nsubmit latency (no image): median {times[5] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms")
    assert times[5] < 0.5


BAD_JSON = [
    ({"image_size": "abc"}, "image_size"),
    ({"image_size": "5000*5000"}, "image_size"),
    ({"image_size": "8*8"}, "image_size"),
    ({"num_frames": 0}, "num_frames"),
    ({"num_frames": 999}, "num_frames"),
    ({"num_frames": "many"}, "num_frames"),
    ({"infer_steps": 1000}, "infer_steps"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"guidance_scale_2": 2.0}, "guidance_scale_2"),
    ({"seed": -5}, "seed"),
    ({"task": "x2v"}, "task"),
    ({"task": "flf2v"}, "task"),
    ({"video_url": "data:video/mp4;base64,AAAA"}, "task"),
    ({"task": "i2v"}, "image"),
    ({"last_image_url": "data:image/png;base64,AAAA"}, "last_image_url"),
    ({"image_url": "not a url"}, "image_url"),
    ({"image_url": "data:image/png;base64,AAAA"}, "image_url"),
    ({"image_url": "data:text/plain,hello"}, "image_url"),
    ({"image_url": "http://10.0.0.1/a.png"}, "image_url"),
    ({"image_url": "http://[::1]/a.png"}, "image_url"),
    ({"image_url": "http://2130706433/a.png"}, "image_url"),
    ({"image_url": "http://169.254.169.254/latest/meta-data/"}, "image_url"),
    ({"image_url": "file:///etc/passwd"}, "image_url"),
    ({"image_url": 12}, "image_url"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "a\u0000b"}, "prompt"),
    ({"prompt": "x" * 10_001}, "prompt"),
    ({"negative_prompt": "\ud800"}, "negative_prompt"),
    ({"surprise": 1}, "surprise"),
    ({"priority": 1000}, "priority"),
    ({"resize_mode": "zoom"}, "resize_mode"),
    ({"strength": 0}, "strength"),
    ({"fps": 0}, "fps"),
    ({"sample_solver": "magic"}, "sample_solver"),
]


@pytest.mark.parametrize("fields,field", BAD_JSON, ids=[f for _, f in BAD_JSON])
def test_every_bad_input_is_a_422_naming_the_field(client, fields, field):
    body = json.dumps({"prompt": "x", **fields})  # ASCII-escaped: lone surrogates travel as \\ud800
    response = client.post("/submit", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == field


@pytest.mark.parametrize("content,content_type,status", [
    (b"[]", "application/json", 422), (b"{", "application/json", 422), (b"", "application/json", 422),
    (b'{"guidance_scale": NaN}', "application/json", 422), (b"\xff\xfe", "application/json", 422),
    (b"prompt=x", "text/plain", 415), (b"--x\r\nbroken", "multipart/form-data; boundary=x", 422),
    (b"", "multipart/form-data; boundary=x", 422), (b"{}", "application/json", 422),
])
def test_malformed_bodies_are_4xx_in_the_error_shape(client, content, content_type, status):
    response = client.post("/submit", content=content, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    error_of(response)


def test_bad_files_fail_at_submit(client):
    for files, field in (({"image": ("x.png", b"not an image", "image/png")}, "image"),
                         ({"image": ("x.png", png_bytes(1, 1), "image/png")}, "image"),
                         ({"video": ("x.mp4", png_bytes(), "video/mp4")}, "task")):
        response = client.post("/submit", data={"prompt": "x"}, files=files)
        assert response.status_code == 422, response.text
        assert error_of(response)["field"] == field
    both = client.post("/submit", data={"prompt": "x", "image_url": data_url(png_bytes())},
                       files={"image": ("x.png", png_bytes(), "image/png")})
    assert both.status_code == 422 and error_of(both)["field"] == "image"
    text_as_file = client.post("/submit", data={"prompt": "x"}, files={"seed": ("s.txt", b"1", "text/plain")})
    assert text_as_file.status_code == 422 and error_of(text_as_file)["field"] == "seed"


def test_too_large_inputs_and_bodies_are_413(client):
    big_png = b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD)
    upload = client.post("/submit", data={"prompt": "x"}, files={"image": ("big.png", big_png, "image/png")})
    assert upload.status_code == 413 and error_of(upload)["field"] == "image"
    inline = client.post("/submit", json={"prompt": "x", "image_url": data_url(big_png)})
    assert inline.status_code == 413 and error_of(inline)["field"] == "image_url"
    body = client.post("/submit", content=b"{" + b" " * (4 * MAX_UPLOAD + 2 * 1024 * 1024) + b"}",
                       headers={"Content-Type": "application/json"})
    assert body.status_code == 413 and error_of(body)["code"] == "too_large"


def test_wrong_routes_methods_and_ids_use_the_error_shape(client):
    queued = submit(client)["task_id"]
    cases = [
        (client.get("/status/0123456789abcdef0123456789abcdef"), 404, "not_found"),
        (client.get("/status/%00"), 404, "not_found"),
        (client.get("/status/" + "x" * 300), 404, "not_found"),
        (client.get("/no/such/route"), 404, "not_found"),
        (client.put("/submit"), 405, "method_not_allowed"),
        (client.get(f"/result/{queued}"), 409, "not_ready"),
        (client.get(f"/result/{queued}/thumbnail"), 409, "not_ready"),
        (client.get("/tasks", params={"status": "sleeping"}), 422, "invalid_request"),
        (client.get("/tasks", params={"limit": 0}), 422, "invalid_request"),
        (client.get("/tasks", params={"after": "no/such"}), 422, "invalid_request"),
        (client.get("/tasks", params={"after": "f" * 32}), 422, "invalid_request"),
        (client.get("/v1/videos/abc/content", params={"variant": "spritesheet"}), 422, "invalid_request"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert error_of(response)["code"] == code, response.text


# ------------------------------------------------------------------ lists, cancel, events
def test_tasks_are_listed_newest_first_with_pages_and_filters(client):
    ids = [submit(client, prompt=f"page {i}")["task_id"] for i in range(3)]
    first = client.get("/tasks", params={"limit": 2}).json()
    assert [t["task_id"] for t in first["tasks"]] == ids[::-1][:2] and first["has_more"]
    second = client.get("/tasks", params={"limit": 2, "after": first["next_after"]}).json()
    assert second["tasks"][0]["task_id"] == ids[0]
    client.post(f"/cancel/{ids[1]}")
    cancelled = client.get("/tasks", params={"status": "cancelled", "limit": 200}).json()["tasks"]
    assert ids[1] in {t["task_id"] for t in cancelled} and all(t["status"] == "cancelled" for t in cancelled)
    item = first["tasks"][0]
    for key in ("prompt", "task", "request", "progress", "current_step", "total_steps", "stage", "queue_position",
                "elapsed", "video_url", "thumbnail_url", "error", "adjustments"):
        assert key in item, key


def test_cancel_a_queued_task_and_cancelling_again_is_409(client):
    task_id = submit(client)["task_id"]
    cancelled = client.post(f"/cancel/{task_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["code"] == "cancelled"
    again = client.post(f"/cancel/{task_id}")
    assert again.status_code == 409 and error_of(again)["code"] == "wrong_state"
    assert client.get(f"/result/{task_id}").status_code == 409


def test_events_stream_changes_in_order_and_end_at_a_terminal_status(api, client):
    task_id = submit(client)["task_id"]
    seen: list[tuple[str, dict, float]] = []
    with httpx.Client(base_url=api.url, timeout=30) as streamer:
        with streamer.stream("GET", f"/events/{task_id}") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for event in sse_events(response):
                seen.append(event)
                if len(seen) == 1:
                    cancel_sent = time.perf_counter()
                    assert client.post(f"/cancel/{task_id}").status_code == 200
    assert [e[1]["status"] for e in seen] == ["queued", "cancelled"]
    assert all(name == "status" for name, _, _ in seen) and seen[0][1]["task_id"] == task_id
    latency = seen[1][2] - cancel_sent
    print(f"\nSSE: cancel -> event in {latency * 1000:.1f} ms")
    assert latency < 1.0  # a wake-up, not the fallback poll
    finished = client.get(f"/events/{task_id}")  # a finished task: one event, then the end
    events = [json.loads(line[5:]) for line in finished.text.splitlines() if line.startswith("data:")]
    assert [e["status"] for e in events] == ["cancelled"]
    assert client.get("/events/0123456789abcdef0123456789abcdef").status_code == 404
    assert api.app.state.api.feed.subscribers == 0


def test_idempotency_key_returns_the_same_task(client, api):
    key = {"Idempotency-Key": f"order-{time.time_ns()}"}
    body = {**TINY, "prompt": "only once", "image_url": data_url(png_bytes())}
    first = client.post("/submit", json=body, headers=key).json()
    second = client.post("/submit", json=body, headers=key).json()
    assert first["task_id"] == second["task_id"]
    listed = client.get("/tasks", params={"limit": 200}).json()["tasks"]
    assert sum(t["prompt"] == "only once" for t in listed) == 1
    conflict = client.post("/submit", json={**body, "prompt": "something else"}, headers=key)
    assert conflict.status_code == 409 and error_of(conflict)["code"] == "idempotency_conflict"
    other_image = client.post("/submit", json={**body, "image_url": data_url(png_bytes(color=(0, 0, 255)))},
                              headers=key)
    assert other_image.status_code == 409
    inputs = list((api.settings.results_path / first["task_id"] / "inputs").iterdir())
    assert len(inputs) == 1  # the conflicting image was not left behind
    bad_key = client.post("/submit", json=body, headers={"Idempotency-Key": "x" * 300})
    assert bad_key.status_code == 422 and error_of(bad_key)["field"] == "Idempotency-Key"


def test_a_full_queue_is_429_with_retry_after(tmp_path):
    server = LiveApi(load_settings(data_dir=tmp_path, max_concurrent_tasks=2)).start()
    try:
        with server.client() as c:
            assert submit(c)["status"] == "queued" and submit(c)["status"] == "queued"
            full = c.post("/submit", json={**TINY, "prompt": "one too many"})
            assert full.status_code == 429 and error_of(full)["code"] == "queue_full"
            assert int(full.headers["Retry-After"]) >= 1
            sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                sdk.videos.create(prompt="also too many", size="64x64")
            assert not list((tmp_path / "results").glob("*/inputs/*"))  # no orphan input files
    finally:
        server.stop()


# ------------------------------------------------------------------ auth
def test_api_keys_guard_everything_but_health_metrics_and_the_page(tmp_path):
    server = LiveApi(load_settings(data_dir=tmp_path, api_keys="key-a,key-b")).start()
    try:
        with server.client() as anonymous, server.client("key-a") as a, server.client("key-b") as b, \
                server.client("key-c") as wrong:
            for path in ("/tasks", "/status/abc", "/openapi.json", "/docs", "/v1/videos", "/events/abc"):
                response = anonymous.get(path)
                assert response.status_code == 401, path
                assert error_of(response)["code"] == "unauthorized" and response.headers["WWW-Authenticate"] == "Bearer"
            assert anonymous.post("/submit", json={"prompt": "x"}).status_code == 401
            assert wrong.get("/tasks").status_code == 401
            assert anonymous.get("/health").status_code == 503  # no workers, but no 401
            assert anonymous.get("/metrics").status_code == 200
            assert anonymous.get("/").status_code == 200 and anonymous.get("/static/app.js").status_code == 200
            mine = submit(a, prompt="a's task")["task_id"]
            assert a.get(f"/status/{mine}").status_code == 200
            assert b.get(f"/status/{mine}").status_code == 404
            assert b.post(f"/cancel/{mine}").status_code == 404
            assert b.get(f"/events/{mine}").status_code == 404
            assert mine not in {t["task_id"] for t in b.get("/tasks").json()["tasks"]}
            assert mine in {t["task_id"] for t in a.get("/tasks").json()["tasks"]}
            key = {"Idempotency-Key": "shared-key"}  # keys are per API key, not global
            assert a.post("/submit", json={**TINY, "prompt": "p"}, headers=key).json()["task_id"] != \
                b.post("/submit", json={**TINY, "prompt": "p"}, headers=key).json()["task_id"]
            sdk_b = openai.OpenAI(base_url=f"{server.url}/v1", api_key="key-b", max_retries=0)
            with pytest.raises(openai.NotFoundError):
                sdk_b.videos.retrieve(mine)
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).videos.list()
        store = TaskStore(server.settings)
        try:
            assert "key-a" not in store.get(mine).owner  # the database keeps a hash, never the key
        finally:
            store.close()
    finally:
        server.stop()


# ------------------------------------------------------------------ OpenAI API without workers
def test_openai_create_list_retrieve_delete_while_queued(api):
    sdk = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    video = sdk.videos.create(prompt="a lighthouse", seconds="4", size="100x60",
                              extra_body={"num_inference_steps": 2, "fps": 8, "seed": 3})
    assert video.object == "video" and video.status == "queued" and video.progress == 0
    assert video.size == "96x64" and video.seconds == "4.12"  # 4 s x 8 fps + 1 = 33 frames
    assert video.model == "wan2.2-ti2v-5b" and abs(video.created_at - time.time()) < 30
    raw = sdk.videos.with_raw_response.retrieve(video.id)
    assert raw.headers["openai-poll-after-ms"] == "2000" and raw.parse().id == video.id
    # This SDK refuses a dict for input_reference (it expects a file there), so URLs go in extra_body;
    # it sends them as the form field input_reference[image_url].
    second = sdk.videos.create(prompt="a harbour", size="64x64",
                               extra_body={"input_reference": {"image_url": data_url(png_bytes())}})
    assert sdk.videos.retrieve(second.id).size == "64x64"
    newest = sdk.videos.list(limit=2)
    assert [v.id for v in newest.data] == [second.id, video.id]
    oldest = sdk.videos.list(order="asc", limit=1)
    assert oldest.data[0].id != second.id and oldest.has_more
    deleted = sdk.videos.delete(second.id)
    assert deleted.deleted and deleted.id == second.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(second.id)
    assert not (api.settings.results_path / second.id / "inputs").exists()
    with pytest.raises(openai.UnprocessableEntityError) as e:
        sdk.videos.create(prompt="x", size="64x64", model="sora-2")
    assert e.value.body["param"] == "model" if isinstance(e.value.body, dict) else True
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.videos.create(prompt="x", seconds="600")
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.videos.create(prompt="x", extra_body={"input_reference": {"file_id": "file-123"}})
    with pytest.raises(openai.ConflictError):
        sdk.videos.download_content(video.id)


# ------------------------------------------------------------------ health, metrics, docs, page
def test_health_follows_the_worker_group_registry(tmp_path):
    settings = load_settings(data_dir=tmp_path)
    server = LiveApi(settings).start()
    store = TaskStore(settings)
    try:
        with server.client() as c:
            down = c.get("/health")
            assert down.status_code == 503 and down.json()["status"] == "unhealthy"
            assert "demo, random weights" in down.json()["model"]
            # What a supervisor and its group record (see wanserve.worker): one serving group...
            store.register_group("m1/g0", supervisor="m1", host="m1", state=GroupState.starting,
                                 lease_owner="m1/g0#1", pids=[101], devices=["cuda:0", "cuda:1"])
            store.group_ready("m1/g0#1", model_label="wan2.1-t2v:Wan2.1-T2V-1.3B", variant="wan2.1-t2v",
                              task_types=["t2v", "v2v"])
            body = wait_for(lambda: (r := c.get("/health")).status_code == 200 and r.json(), 10, "health ok")
            assert body["status"] == "ok" and body["model"] == "wan2.1-t2v:Wan2.1-T2V-1.3B"
            assert (body["device_type"], body["device_count"]) == ("cuda", 2)
            [worker] = body["workers"]
            assert worker["id"] == "m1/g0" and worker["state"] == "idle" and worker["pids"] == [101]
            assert worker["current_task"] is None
            # ... and requests are now snapped against the registered model (grid 16, not 32).
            time.sleep(2.1)  # the registry is cached for 2 s
            assert submit(c, image_size="80*48")["request"]["size"] == "80*48"
            store.register_group("m1/g1", supervisor="m1", host="m1", state=GroupState.failed, lease_owner=None)
            assert c.get("/health").json()["status"] == "degraded"
    finally:
        store.close()
        server.stop()


def test_metrics_are_prometheus_text(client):
    submit(client)
    client.get("/status/0123456789abcdef0123456789abcdef")
    text = client.get("/metrics").text
    assert 'wanserve_http_requests_total{method="POST",route="/submit",status="200"}' in text
    assert 'route="/status/{task_id}",status="404"' in text
    assert "wanserve_http_request_duration_seconds_bucket" in text
    assert 'wanserve_queue_depth{state="queued"}' in text and 'wanserve_worker_groups{state="idle"} 0.0' in text
    assert "wanserve_task_duration_seconds_bucket" in text and "wanserve_task_stage_seconds" in text
    queued = [line for line in text.splitlines() if line.startswith('wanserve_queue_depth{state="queued"}')][0]
    assert float(queued.split()[-1]) >= 1


def test_docs_openapi_and_web_page_work_offline(client):
    spec = client.get("/openapi.json").json()
    for path in ("/submit", "/status/{task_id}", "/cancel/{task_id}", "/result/{task_id}", "/tasks",
                 "/events/{task_id}", "/health", "/metrics", "/v1/videos", "/v1/videos/{video_id}",
                 "/v1/videos/{video_id}/content"):
        assert path in spec["paths"], path
    assert {"SubmitRequest", "SubmitForm", "VideoCreateRequest", "ErrorResponse"} <= set(spec["components"]["schemas"])
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/style.css").status_code == 200


def test_the_api_process_never_loads_torch(tmp_path):
    """`python -m wanserve.api` serves requests without torch in its address space."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANSERVE_", "DATABASE_URL"))}
    env.update(DATA_DIR=str(tmp_path), SERVER_PORT=str(port), LOG_LEVEL="warning")
    process = subprocess.Popen([sys.executable, "-m", "wanserve.api"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 503
            except httpx.HTTPError:
                return process.poll() is not None

        wait_for(up, 30, "the API process")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert httpx.post(f"{url}/submit", json={**TINY, "prompt": "x", "image_url": data_url(png_bytes())},
                          timeout=10).status_code == 200
        httpx.get(f"{url}/metrics", timeout=10)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps
        assert _listening_addresses(port) == {"127.0.0.1"}  # SERVER_HOST's default: this machine only
    finally:
        process.terminate()
        process.wait(15)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp, no traffic)."""
    import ipaddress

    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
    return found


# ------------------------------------------------------------------ PostgreSQL
@pytest.mark.postgres
def test_on_postgresql_events_arrive_by_notify_and_text_is_checked(postgres_url, tmp_path):
    from worker_support import create_schema, drop_schema

    schema, url = create_schema(postgres_url)
    server = LiveApi(load_settings(data_dir=tmp_path, database_url=url)).start()
    try:
        with server.client() as c:
            nul = c.post("/submit", content=json.dumps({"prompt": "a\u0000b"}),
                         headers={"Content-Type": "application/json"})
            assert nul.status_code == 422 and error_of(nul)["field"] == "prompt"
            assert c.get("/status/%00").status_code == 404
            task_id = submit(c)["task_id"]
            with httpx.Client(base_url=server.url, timeout=30) as streamer, \
                    streamer.stream("GET", f"/events/{task_id}") as response:
                seen = []
                for _, data, arrived in sse_events(response):
                    seen.append((data["status"], arrived))
                    if len(seen) == 1:
                        sent = time.perf_counter()
                        c.post(f"/cancel/{task_id}")
            assert [s for s, _ in seen] == ["queued", "cancelled"]
            assert seen[1][1] - sent < 1.0  # LISTEN/NOTIFY, not the fallback poll
    finally:
        server.stop()
        drop_schema(postgres_url, schema)


def test_a_request_without_a_seed_gets_one_at_submit(client):
    """Fixed at submit, so a retry after a crash (another attempt) makes the same video."""
    first, second = submit(client), submit(client)
    for status in (first, second):
        assert isinstance(status["request"]["seed"], int)
        assert client.get(f"/status/{status['task_id']}").json()["request"]["seed"] == status["request"]["seed"]
    assert first["request"]["seed"] != second["request"]["seed"]
    key = {"Idempotency-Key": f"seedless-{time.time_ns()}"}
    once = client.post("/submit", json={**TINY, "prompt": "keyed"}, headers=key).json()
    again = client.post("/submit", json={**TINY, "prompt": "keyed"}, headers=key).json()
    assert once["task_id"] == again["task_id"] and once["request"]["seed"] == again["request"]["seed"]
    assert submit(client, seed=0)["request"]["seed"] == 0


def test_validation_messages_read_as_sentences(client):
    bad = client.post("/submit", json={**TINY, "prompt": "x", "image_size": "huge"})
    assert bad.status_code == 422
    assert error_of(bad)["message"] == "image_size: 'huge' is not a size; write it as W*H or WxH, e.g. 832*480"
