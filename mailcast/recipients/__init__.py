"""Recipients: the row model, one module per source (CSV/TSV, XLSX, SQL), the checks (validate,
dedupe) and the streaming prepare pipeline that writes them into the ledger."""

from mailcast.recipients.model import Recipient, RecipientTable, gc_paused

__all__ = ["Recipient", "RecipientTable", "gc_paused"]
