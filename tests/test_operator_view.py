"""What the people who run the service look at: /metrics and /health after real tasks, and the web
page in a real headless Chromium against a real `wanserve serve` (one API process, one worker group
on the demo model), doing what a user does: submit with an uploaded image, watch the progress bar,
play and download the video, cancel, read error messages, type an API key.

One service is shared by the module. A second API process with API_KEYS runs on the same queue
(the API and the workers meet only in the task store), so the keyed page needs no second worker
group. Tasks are tiny (64x64, 5 frames); prompt markers from tests/worker_support/hooks slow a task
down ([slow=S]) or make it fail ([oom])."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from api_support import LiveApi, png_bytes, running_service
from conftest import decode_mp4
from prometheus_client.parser import text_string_to_metric_families
from worker_support import wait_for

from wanserve.settings import load_settings

TINY = {"image_size": "64*64", "num_frames": "5", "infer_steps": "2"}
API_KEY = "sesame-for-the-web-page"
CHROMIUM = shutil.which("chromium") or next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
# Flags for a container without a display, a GPU, /dev/shm room or internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
NO_CHROMIUM = ("needs Chromium: /usr/bin/chromium is not installed (scripts/test.sh installs Debian's "
               "chromium package when it runs as root with apt-get)")


def browser_test(test):
    return pytest.mark.browser(pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)(test))


@pytest.fixture(scope="module")
def service(tmp_path_factory, demo_data_dir):
    """(DATA_DIR, base URL) of `wanserve serve` on the demo model, serving."""
    data = tmp_path_factory.mktemp("operator-view")
    with running_service(data, demo_data_dir / "demo-model", lease_seconds=10, task_timeout=120) as (_, url):
        yield data, url


@pytest.fixture(scope="module")
def keyed_api(service, demo_data_dir):
    """A second API, with API_KEYS, on the service's queue and results (served by its workers)."""
    data, _ = service
    api = LiveApi(load_settings(data_dir=data, model_ckpt_dir=demo_data_dir / "demo-model", api_keys=[API_KEY]))
    api.start()
    yield api.url
    api.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (own storage) that fails the test on any uncaught script error."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def run_task(url: str, prompt: str, **fields: str) -> dict:
    """Submit over HTTP and wait for the end; the final /status."""
    with httpx.Client(base_url=url, timeout=30) as client:
        submitted = client.post("/submit", data={**TINY, "prompt": prompt, **fields})
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        return wait_for(lambda: (s := client.get(f"/status/{task_id}").json())["status"]
                        in ("completed", "failed", "cancelled") and s, 90, f"task {task_id}", interval=0.1)


# ------------------------------------------------------------------ /metrics and /health
def test_metrics_and_health_show_step_time_and_device_memory_of_the_live_group(service):
    _, url = service
    done = run_task(url, "metrics: a cat on the grass", infer_steps="3")
    assert done["status"] == "completed" and done["result"]["steps"] == 3

    health = httpx.get(f"{url}/health", timeout=10).json()
    [worker] = health["workers"]
    [memory] = worker["memory"]
    assert memory["device"] == "cpu" and memory["ranks"] == [0] and memory["updated_at"]
    assert 0 < memory["used_bytes"] <= memory["peak_bytes"] < memory["total_bytes"]
    assert 0 < memory["free_bytes"] < memory["total_bytes"]

    text = httpx.get(f"{url}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ours = [f for f in families.values() if f.name.startswith("wanserve_")]
    assert ours and all(f.documentation for f in ours)  # every series is explained
    counted = {s.name for f in ours if f.type == "counter" for s in f.samples}
    assert counted and all(name.endswith(("_total", "_created")) for name in counted)

    steps = {s.name: s.value for s in families["wanserve_denoise_step_seconds"].samples}
    assert families["wanserve_denoise_step_seconds"].type == "histogram"
    assert steps["wanserve_denoise_step_seconds_count"] >= 3  # this task's steps, maybe earlier ones too
    assert steps["wanserve_denoise_step_seconds_sum"] > 0

    def gauge(name: str) -> float:
        [value] = [s.value for s in families[name].samples
                   if s.labels == {"group": worker["id"], "device": "cpu"}]
        return value

    used, peak = gauge("wanserve_device_memory_used_bytes"), gauge("wanserve_device_memory_peak_bytes")
    total, free = gauge("wanserve_device_memory_total_bytes"), gauge("wanserve_device_memory_free_bytes")
    assert 0 < used <= peak < total and 0 < free < total
    # The group's rank process holds the model: far more than nothing, less than the machine.
    assert used > 50 * 1024 * 1024


# ------------------------------------------------------------------ the web page
PROGRESS_RECORDER = """() => {
  // Every value each task's <progress> shows, in order (sampled faster than the events come).
  window.progressSeen = {};
  setInterval(() => {
    for (const task of document.querySelectorAll('.task')) {
      const seen = (window.progressSeen[task.dataset.taskId] ||= []);
      const value = task.querySelector('progress').value;
      if (seen[seen.length - 1] !== value) seen.push(value);
    }
  }, 20);
}"""


def open_page(page, url: str) -> None:
    page.goto(f"{url}/")
    page.wait_for_selector("#health.ok", timeout=20_000)


def fill_form(page, prompt: str, size: str = "64*64", frames: str = "5", steps: str = "2") -> None:
    page.fill("#prompt", prompt)
    page.fill("#image_size", size)
    page.fill("#num_frames", frames)
    page.fill("#infer_steps", steps)


def wait_playable(video, timeout: float = 20_000) -> None:
    """The element has decoded the mp4 (not only got a src), then plays it to the end."""
    video.page.wait_for_function("v => v.readyState >= 2 && v.duration > 0 && v.videoWidth > 0",
                                 arg=video.element_handle(), timeout=timeout)
    ended_at = video.evaluate("""v => { v.muted = true; return new Promise((resolve, reject) => {
        v.addEventListener('ended', () => resolve(v.currentTime), {once: true});
        v.play().catch(reject); }); }""")
    assert ended_at > 0


@browser_test
def test_the_page_submits_with_an_image_follows_progress_plays_and_downloads(service, page, tmp_path):
    _, url = service
    image = tmp_path / "first-frame.png"
    image.write_bytes(png_bytes(64, 64, (40, 90, 220)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    open_page(page, url)
    assert "random weights" in page.text_content("#model") and page.is_visible("#demo-note")
    page.evaluate(PROGRESS_RECORDER)

    page.set_input_files("#image", str(image))
    preview = page.locator("#image-preview")
    preview.wait_for(state="visible")
    page.wait_for_function("img => img.complete && img.naturalWidth === 64", arg=preview.element_handle())
    assert page.is_hidden("#last-image-preview")
    fill_form(page, "[slow=0.25] a blue cat from the browser", steps="6")
    page.click("#submit-button")

    task = page.locator(".task", has_text="a blue cat from the browser")
    task.locator(".status-chip.running").wait_for(timeout=30_000)
    task.locator(".progress-text", has_text="step").wait_for(timeout=30_000)
    task.locator(".status-chip.completed").wait_for(timeout=60_000)
    task_id = task.get_attribute("data-task-id")
    assert "i2v" in task.locator(".task-kind").text_content()
    took = re.fullmatch(r"done in (\d+(?:\.\d)?) s", task.locator(".progress-text").text_content())
    assert took and float(took.group(1)) > 0  # a second-long task is not "done in 0 s"
    assert any(f"/events/{task_id}" in r for r in requests)  # live over Server-Sent Events

    seen = page.evaluate("id => window.progressSeen[id]", task_id)
    between = [v for v in seen if 0 < v < 100]
    assert seen == sorted(seen) and seen[-1] == 100, seen  # only forward, to the end
    assert len(set(between)) >= 3, seen  # the bar moved step by step, not just 0 -> 100
    assert page.locator(f".task[data-task-id='{task_id}'] progress").evaluate("p => p.max") == 100

    wait_playable(task.locator("video"))
    link = task.locator("a.download")
    assert link.get_attribute("href").endswith(f"/result/{task_id}")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == f"{task_id}.mp4"
    target = tmp_path / "downloaded.mp4"
    download.save_as(target)
    frames, info = decode_mp4(target)
    assert frames.shape == (5, 64, 64, 3) and info["codec"] == "h264"


@browser_test
def test_the_page_cancels_a_running_task_and_shows_errors_in_words(service, page):
    _, url = service
    open_page(page, url)

    # A bad value: the server's own message in the form's alert.
    fill_form(page, "a bad size", size="huge")
    page.click("#submit-button")
    alert = page.locator("#form-error[role=alert]")
    alert.wait_for(state="visible")
    refused = httpx.post(f"{url}/submit", data={**TINY, "prompt": "a bad size", "image_size": "huge"})
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] in alert.text_content()
    assert page.locator(".task", has_text="a bad size").count() == 0

    # Cancel from the task's button while it denoises.
    fill_form(page, "[slow=0.3] cancel me from the page", steps="30")
    page.click("#submit-button")
    assert page.is_hidden("#form-error")  # a good submission clears the old error
    task = page.locator(".task", has_text="cancel me from the page")
    task.locator(".progress-text", has_text="denoise").wait_for(timeout=30_000)
    task.locator("button.cancel").click()
    task.locator(".status-chip.cancelled").wait_for(timeout=15_000)
    assert task.locator("button.cancel").is_hidden()
    status = httpx.get(f"{url}/status/{task.get_attribute('data-task-id')}").json()
    assert status["status"] == "cancelled" and status["current_step"] < 30

    # A task that fails while running: its error message on the task.
    fill_form(page, "[oom] fails on purpose")
    page.click("#submit-button")
    failed = page.locator(".task", has_text="fails on purpose")
    failed.locator(".status-chip.failed").wait_for(timeout=30_000)
    error = httpx.get(f"{url}/status/{failed.get_attribute('data-task-id')}").json()["error"]
    assert error["code"] == "out_of_memory"
    shown = failed.locator(".task-error")
    assert shown.is_visible() and error["message"] in shown.text_content() and "[out_of_memory]" in shown.text_content()
    assert failed.locator(".task-result").is_hidden()


@browser_test
def test_the_page_works_with_an_api_key(keyed_api, page):
    open_page(page, keyed_api)
    listing = page.locator("#tasks-error")
    listing.wait_for(state="visible")  # the task list needs the key
    assert "needs an API key" in listing.text_content()
    fill_form(page, "keyed: a red fox")
    page.click("#submit-button")
    page.locator("#form-error").wait_for(state="visible")
    assert "needs an API key" in page.text_content("#form-error")

    page.click("details > summary")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Tab")  # change event: the list reloads with the key
    listing.wait_for(state="hidden")
    page.click("#submit-button")
    task = page.locator(".task", has_text="keyed: a red fox")
    task.locator(".status-chip.completed").wait_for(timeout=60_000)
    video = task.locator("video")
    wait_playable(video)  # fetched with the key (a <video> cannot send it) and played from memory
    assert video.evaluate("v => v.src").startswith("blob:")
    assert page.is_hidden("#form-error")
    owned = httpx.get(f"{keyed_api}/tasks", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert task.get_attribute("data-task-id") in {t["task_id"] for t in owned["tasks"]}


@browser_test
def test_screenshot_of_the_page_with_a_completed_task(service, page, tmp_path):
    """A full-page screenshot is a real picture of the page: right size, header, task list and the
    video's first frame drawn. (docs/web-page.png was taken the same way.)"""
    from PIL import Image, ImageStat

    _, url = service
    done = run_task(url, "screenshot: waves at sunset")
    assert done["status"] == "completed"
    open_page(page, url)
    task = page.locator(f".task[data-task-id='{done['task_id']}']")
    video = task.locator("video")
    page.wait_for_function("v => v.readyState >= 2", arg=video.element_handle(), timeout=20_000)
    page.wait_for_function("() => document.fonts.status === 'loaded'")
    path = tmp_path / "web-page.png"
    page.screenshot(path=str(path), full_page=True)

    shot = Image.open(path)
    height = page.evaluate("() => document.documentElement.scrollHeight")
    assert shot.format == "PNG" and shot.size == (VIEWPORT["width"], height)
    shot = shot.convert("RGB")

    def region(selector_or_locator) -> Image.Image:
        locator = page.locator(selector_or_locator) if isinstance(selector_or_locator, str) else selector_or_locator
        box = locator.bounding_box()
        assert box and box["width"] > 20 and box["height"] > 10, selector_or_locator
        scroll = page.evaluate("() => [window.scrollX, window.scrollY]")
        left, top = box["x"] + scroll[0], box["y"] + scroll[1]
        return shot.crop((int(left), int(top), int(left + box["width"]), int(top + box["height"])))

    def drawn(image: Image.Image) -> float:
        """Share of pixels that differ from the region's most common colour (its background)."""
        colors = image.getcolors(image.width * image.height)
        background = max(colors)[0]
        return 1 - background / (image.width * image.height)

    assert drawn(region("header")) > 0.01  # title, model and health badge are painted
    assert drawn(region("#submit-form")) > 0.02
    assert drawn(region("#tasks")) > 0.05
    frame = region(video)  # the demo model's video is noise: a busy picture, not an empty box
    assert max(ImageStat.Stat(frame).stddev) > 10
