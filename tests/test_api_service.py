"""The whole service as a user runs it: `wanserve serve` (the API process + a supervisor with one
worker group on the demo model), driven over HTTP like the README's curl examples, the original
benchmark client, a browser's event stream, and the official OpenAI SDK.

Requests are tiny (64x64, 5 frames, 2 steps: about a second each on 2 CPU cores). Prompt markers
from tests/worker_support/hooks slow a task down ([slow=S]: S seconds per step) so it can be
watched or cancelled while it runs. The web page in Chromium, /metrics' step time and device
memory: tests/test_operator_view.py."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from api_support import (
    ImageServer,
    data_url,
    error_of,
    png_bytes,
    poll_status,
    running_service,
    sse_events,
    wait_for,
)
from conftest import decode_mp4

from wanserve.ops.bench_client import BenchConfig, run_bench

TINY = {"image_size": "64*64", "num_frames": 5, "infer_steps": 2}


@pytest.fixture(scope="module")
def image_server():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, demo_data_dir):
    data = tmp_path_factory.mktemp("api-service")
    with running_service(data, demo_data_dir / "demo-model", allowed_image_hosts="127.0.0.1",
                         lease_seconds=10, task_timeout=120) as running:
        yield running


@pytest.fixture
def client(service):
    _, url = service
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed-without-API_KEYS", max_retries=0)


# ------------------------------------------------------------------ the README's curl examples
def test_curl_flow_with_a_data_url_image(client):
    """POST /submit (image as a data: URL) -> poll GET /status -> GET /result."""
    submitted = client.post("/submit", json={**TINY, "prompt": "a cat walks on the grass", "seed": 11,
                                             "image_url": data_url(png_bytes(80, 48))})
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    status = poll_status(client, task_id)
    assert status["status"] == "completed", status
    assert status["task"] == "i2v" and status["progress"] == 100 and status["error"] is None
    assert status["started_at"] and status["finished_at"] and status["elapsed"] > 0
    assert {"queue", "encode", "denoise", "decode", "write", "total"} <= set(status["timings"])
    assert status["result"]["seed"] == 11 and "random weights" in status["model"]
    assert status["video_url"].endswith(f"/result/{task_id}")

    video = client.get(status["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.headers["accept-ranges"] == "bytes"
    frames, info = _decode(video.content)
    assert frames.shape == (5, 64, 64, 3) and info["codec"] == "h264"

    partial = client.get(status["video_url"], headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206 and partial.content == video.content[:100]
    assert partial.headers["content-range"] == f"bytes 0-99/{len(video.content)}"
    tail = client.get(status["video_url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == video.content[-10:]
    beyond = client.get(status["video_url"], headers={"Range": f"bytes={len(video.content) + 5}-"})
    assert beyond.status_code == 416 and error_of(beyond)["code"] == "range_not_satisfiable"
    garbled = client.get(status["video_url"], headers={"Range": "pages=1-2"})
    assert garbled.status_code == 200 and garbled.content == video.content
    thumbnail = client.get(status["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.content[:3] == b"\xff\xd8\xff"
    assert client.post(f"/cancel/{task_id}").status_code == 409


def _decode(mp4: bytes):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(mp4)
        f.flush()
        return decode_mp4(f.name)


def test_curl_flow_with_an_http_image_url(client, image_server):
    image_server.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, png_bytes(64, 64, (10, 200, 10)))
    submitted = client.post("/submit", json={**TINY, "prompt": "a green cat",
                                             "image_url": image_server.url("/cat.png")})
    assert submitted.status_code == 200, submitted.text
    assert image_server.hits["/cat.png"] == 1
    status = poll_status(client, submitted.json()["task_id"])
    assert status["status"] == "completed" and status["task"] == "i2v"


def test_a_request_the_model_cannot_run_is_refused_at_submit(client):
    response = client.post("/submit", json={**TINY, "prompt": "x", "task": "flf2v"})
    assert response.status_code == 422 and error_of(response)["code"] == "task_not_supported"


def test_the_original_benchmark_client_works_unchanged(service):
    _, url = service
    report = run_bench(BenchConfig(url=url, requests=2, users=2, image_size="64*64", num_frames=5, infer_steps=2,
                                   poll_interval=0.1, timeout=120))
    summary = report["summary"]
    assert summary["completed"] == 2 and summary["success_rate"] == 1.0, report["requests"]
    assert summary["queue_wait_p50_s"] is not None and "denoise" in summary["server_stage_mean_s"]


# ------------------------------------------------------------------ progress events and cancel
def test_events_follow_a_task_step_by_step_to_completion(service, client):
    _, url = service
    body = {**TINY, "infer_steps": 4, "prompt": "[slow=0.3] a slow fox"}
    task_id = client.post("/submit", json=body).json()["task_id"]
    events = []
    with httpx.Client(base_url=url, timeout=60) as streamer, streamer.stream("GET", f"/events/{task_id}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for name, data, _ in sse_events(response):
            events.append((name, data, time.time()))
    statuses = [e[1]["status"] for e in events]
    assert statuses[-1] == "completed" and "running" in statuses
    assert statuses == sorted(statuses, key=["queued", "running", "completed"].index)  # never backwards
    denoise_steps = [e[1]["current_step"] for e in events if e[1]["stage"] == "denoise"]
    assert len(denoise_steps) >= 3 and denoise_steps == sorted(denoise_steps)
    progress = [e[1]["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    last = events[-1][1]
    assert last["video_url"] and last["total_steps"] == 4
    finished = _epoch(last["finished_at"])
    print(f"\nSSE: completion reached the client {1000 * (events[-1][2] - finished):.0f} ms after it was recorded")
    assert events[-1][2] - finished < 1.0


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_cancel_a_running_task_stops_it_within_a_step(service, client):
    _, url = service
    body = {**TINY, "infer_steps": 30, "prompt": "[slow=0.3] never finished"}
    task_id = client.post("/submit", json=body).json()["task_id"]
    wait_for(lambda: client.get(f"/status/{task_id}").json()["stage"] == "denoise", 60, "denoising to start")
    with httpx.Client(base_url=url, timeout=60) as streamer, streamer.stream("GET", f"/events/{task_id}") as response:
        cancelled = client.post(f"/cancel/{task_id}")
        sent = time.perf_counter()
        assert cancelled.status_code == 200
        answer = cancelled.json()
        assert answer["status"] == "cancelled" or (answer["status"] == "running" and answer["cancel_requested"])
        last = None
        for _, data, arrived in sse_events(response):
            last = (data, arrived)
    assert last is not None and last[0]["status"] == "cancelled" and last[0]["error"]["code"] == "cancelled"
    assert last[0]["current_step"] < 30
    assert last[1] - sent < 3.0
    assert client.get(f"/result/{task_id}").status_code == 409
    after = client.post("/submit", json={**TINY, "prompt": "the group serves again"}).json()["task_id"]
    assert poll_status(client, after)["status"] == "completed"


# ------------------------------------------------------------------ the OpenAI SDK
def test_openai_sdk_flow(service, tmp_path):
    _, url = service
    client = sdk(url)
    image = tmp_path / "first-frame.png"
    image.write_bytes(png_bytes(64, 64, (30, 30, 220)))
    video = client.videos.create(prompt="a blue square drifts", input_reference=image, size="64x64", seconds="1",
                                 extra_body={"num_inference_steps": 2, "num_frames": 5, "seed": 5,
                                             "negative_prompt": "blurry"})
    assert video.status in ("queued", "in_progress") and video.object == "video"
    done = client.videos.poll(video.id)
    assert done.status == "completed" and done.progress == 100 and done.error is None
    assert done.completed_at >= done.created_at and done.expires_at > done.completed_at
    assert done.size == "64x64" and float(done.seconds) == pytest.approx(5 / 24, abs=0.01)
    assert "random weights" in done.model
    assert video.id in {v.id for v in client.videos.list(limit=100)}

    content = client.videos.download_content(video.id, variant="video")
    target = tmp_path / "video.mp4"
    content.write_to_file(target)
    frames, _ = decode_mp4(target)
    assert frames.shape == (5, 64, 64, 3)
    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    assert thumbnail.content[:3] == b"\xff\xd8\xff"

    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(video.id)


def test_deleting_a_running_video_cancels_it_first(service, client):
    _, url = service
    openai_client = sdk(url)
    video = openai_client.videos.create(prompt="[slow=0.3] long", size="64x64",
                                        extra_body={"num_inference_steps": 30, "num_frames": 5})
    wait_for(lambda: openai_client.videos.retrieve(video.id).status == "in_progress", 60, "the video to start")
    start = time.perf_counter()
    assert openai_client.videos.delete(video.id).deleted
    print(f"\nDELETE of a running video took {1000 * (time.perf_counter() - start):.0f} ms")
    assert client.get(f"/status/{video.id}").status_code == 404


def test_a_failed_video_reports_its_error(service):
    _, url = service
    failed = sdk(url).videos.create(prompt="[oom] too big", size="64x64",
                                    extra_body={"num_inference_steps": 2, "num_frames": 5})
    done = sdk(url).videos.poll(failed.id)
    assert done.status == "failed" and done.error.code == "out_of_memory" and done.error.message


# ------------------------------------------------------------------ health and metrics
def test_health_and_metrics_show_the_worker_and_the_outcomes(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and "demo, random weights" in health["model"]
    assert health["device_type"] == "cpu" and health["device_count"] == 1
    [worker] = health["workers"]
    assert worker["state"] in ("idle", "busy") and worker["pids"] and worker["responsive"]
    assert set(health["queue"]) == {"queued", "running"}
    metrics = client.get("/metrics").text
    completed = [line for line in metrics.splitlines()
                 if line.startswith('wanserve_tasks_finished_total{outcome="completed"}')]
    assert completed and float(completed[0].split()[-1]) >= 1
    assert 'wanserve_task_stage_seconds_count{stage="denoise"}' in metrics
    assert 'wanserve_worker_groups{state="idle"}' in metrics
