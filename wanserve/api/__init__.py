"""The HTTP API (FastAPI): the original /submit API, OpenAI-compatible /v1/videos, progress events,
health, metrics and the web page. Talks to workers only through the task store; never imports torch."""
