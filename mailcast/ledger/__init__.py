"""The delivery ledger: every recipient of every run, and what happened to it."""
