"""C-STORE response statuses used by the receiver (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

SUCCESS = 0x0000  # PS3.4 B.2.3: Success
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, Out of Resources (A7xx)
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, Data Set does not match SOP Class (A9xx)
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, Cannot understand (Cxxx)
#: PS3.4 B.2.3: Error, Cannot understand (Cxxx; the low bits are ours, related fields
#: Offending Element (0000,0901) and Error Comment (0000,0902)). The SOP Instance UID is
#: already stored under another study, series, patient or SOP class, or the Series Instance
#: UID under another study: a UID names one object (PS3.5 9), so this is another object with
#: a reused UID. The stored one is kept, the incoming one refused (and quarantined).
SOP_INSTANCE_CONFLICT = 0xC211
ECHO_SUCCESS = 0x0000  # PS3.7 9.3.5: C-ECHO Success
#: STOW-RS Failure Reason (PS3.18 I.2.2, Cxxx "Cannot understand"; the low bits are ours):
#: the instance's Study Instance UID is not the study named in the request's target
#: resource (``/studies/{study}``), so it is not stored.
STUDY_UID_MISMATCH = 0xC409
