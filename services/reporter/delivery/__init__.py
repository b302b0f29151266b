"""Delivery: rows per (job, kind, target), the dispatcher, and the senders (PACS, FHIR)."""
