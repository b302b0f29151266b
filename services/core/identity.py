"""How noduleflow names itself inside the DICOM objects it makes.

The reporter writes :data:`MANUFACTURER` into Manufacturer (0008,0070) of every SR, SEG,
Key Object Selection and key image; the receiver recognises that value on what comes back
from a PACS that routes everything (``services.receiver.relevance``), and the Orthanc Lua
guard (``deploy/orthanc/autoroute.lua``) matches the same string. The project's synthetic
phantoms say ``noduleflow-phantom`` and are analysed like any CT.
"""

from __future__ import annotations

#: Manufacturer (0008,0070) of every object noduleflow creates (LO, exact, case-insensitive
#: when matched)
MANUFACTURER = "noduleflow"
