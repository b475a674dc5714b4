"""Thin ``@task`` wrappers around library calls (``mailcast.*``), and the Prefect adapters:
concurrency limits (``limits``), artifacts (``progress``, ``summary``, ``tracking``), the chunk
dispatcher (``dispatch``). Installed as ``mailcast.tasks``; the library never imports it."""
