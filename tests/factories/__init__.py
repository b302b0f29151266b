"""Test factories, one module per subject; import from the module, not from the package.

- :mod:`.dicom`: CT slices and series written to disk (``ct_slice``, ``write_ct_series``).
- :mod:`.api`: rows for API tests (studies, series, jobs, findings, deliveries), a running API.
- :mod:`.reporting`: a CT series with spherical nodules and the rows the worker writes for it.
- :mod:`.worker`: a stored study with a queued job, fake analysis results.

The package itself imports nothing, so a test of the receiver does not pull in the ORM or
the reporter's DICOM builders.
"""
