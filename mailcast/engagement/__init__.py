"""Engagement tracking: signed tokens, the tracking web service (open pixel, click redirects,
one-click unsubscribe), link rewriting at render time, bounce parsing and the suppression list.

Nothing here imports Prefect at module level (the CLI's ``serve`` and ``suppress`` commands run
no flow)."""
