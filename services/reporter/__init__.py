"""The reporter: finished jobs in, DICOM and FHIR out, and the HTTP API.

- :mod:`.results`: the ``noduleflow.reporting`` consumer (artefacts and delivery rows);
- :mod:`.dicom`: SR, SEG and key-image builders and the outbox they are written to;
- :mod:`.delivery`: the dispatcher, the PACS C-STORE SCU and the senders per kind;
- :mod:`.fhir`: FHIR R4 builders, search, database reads, responses and the push client;
- :mod:`.api`: the FastAPI app (routes, auth, audit, metrics, worklist) and its server;
- :mod:`.main`: wiring, and the ``noduleflow reporter`` command.
"""
