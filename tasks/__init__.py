"""The pipeline steps, in the order a recipient row meets them:
ingest → validate → dedupe → plan (ledger rows) → render → send.
Each module holds plain functions and a thin ``@task`` wrapper; tests call the functions."""
