"""The DICOM receiver: Storage SCP, durable instance store, study tracker, outbox relay.

Policies (what a PACS administrator can rely on):

* **Success means durable.** 0x0000 is answered only after the file is renamed atomically
  into ``STORAGE_DIR/<study>/<series>/<sop>.dcm``, its data and its folder are fsync'ed
  and its index row is committed (the index is what the rest of the system trusts).
  Storage below ``min_free_disk_mb``, a volume that fills up while a data set is written
  (the partial file is deleted, the association goes on), an unreachable database or any
  other failure answers 0xA700 (Refused: Out of Resources, PS3.4 B.2.3); the sender
  retries.
* **Paths come from validated UIDs only** (``^[0-9]+(\\.[0-9]+)*$``, at most 64
  characters). A data set whose Study/Series/SOP Instance UID fails answers 0xA900 and
  raises a security alert audit event (110113); nothing is written outside the temporary
  folder, and that file is removed. Bytes that are not a data set at all (no SOP Class or
  SOP Instance UID can be read) and a data set that contradicts its request answer 0xC000
  (Cannot understand).
* **Duplicates** (same SOP Instance UID, same bytes) answer 0x0000, are stored once and
  start no new job. The same UID with **different bytes replaces** the stored instance,
  bumps ``Study.revision`` and marks the study pending, so it is analysed again.
* **Results routed back start nothing.** noduleflow's own objects (Manufacturer
  ``noduleflow``) and every SR, KOS, SEG, Secondary Capture or other non-image instance
  are answered 0x0000 and stored, but never make a study pending or start a job
  (:mod:`.relevance`): a PACS that routes everything causes no amendment loop.
* **Completion.** A study is complete ``STUDY_IDLE_SECONDS`` after its last new instance, or
  ``RELEASE_GRACE_SECONDS`` after the last association carrying it was *released*. An
  aborted or dropped association never shortens the wait: a partial transfer is only
  declared complete when the idle time passes. Instances arriving for a completed study
  (late instances) start a new job with the next version.
* **Crashes.** A killed receiver leaves at most half-received temporary files (removed at
  start-up, never indexed). A file renamed into place whose row was not committed was not
  acknowledged; the sender's re-send indexes it.
* **Access control** is the called AE title (must equal ``AE_TITLE``), the calling AE
  allow-list ``ALLOWED_AETS`` (empty = any, logged as a warning at start-up) and optional
  DICOM TLS (TLS 1.2+, client certificates required when ``DICOM_TLS_CA`` is set). User
  Identity negotiation (PS3.7 D.3.3.7) is accepted but **not verified**: no EVT_USER_ID
  handler is bound, so a username/password or token sent by the peer grants nothing.
* **Bounded resources.** ``max_associations`` negotiated associations per process;
  connections still negotiating counted apart, capped per process and per source address
  and closed after ``acse_timeout_seconds`` (:mod:`.admission`), so idle peers cannot take
  the slots of working ones; DIMSE/network timeouts, a 128 KiB maximum PDU, each data set
  streamed to disk (never held in memory) and refused once it grows past 4 GiB.
"""
