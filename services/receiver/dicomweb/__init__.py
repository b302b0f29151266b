"""DICOMweb ingest: STOW-RS (PS3.18 10.5) into the receiver's storage and index.

:mod:`.multipart` reads the body, :mod:`.stow` spools and stores it, :mod:`.response`
builds the answer, :mod:`.app` is the HTTP endpoint and :mod:`.server` runs it.
"""
