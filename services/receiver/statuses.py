"""C-STORE response statuses used by the receiver (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

SUCCESS = 0x0000  # PS3.4 B.2.3: Success
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, Out of Resources (A7xx)
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, Data Set does not match SOP Class (A9xx)
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, Cannot understand (Cxxx)
ECHO_SUCCESS = 0x0000  # PS3.7 9.3.5: C-ECHO Success
