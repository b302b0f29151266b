"""Links from the worklist and study page into an image viewer, from a URL template.

``NODULEFLOW_VIEWER_URL_TEMPLATE`` names the viewer's URL with the placeholders
``{study}`` (Study Instance UID), ``{series}`` (the analysed series) and ``{instance}``
(the SOP Instance UID of a finding's key slice). For example:

* OHIF: ``https://ohif.example/viewer?StudyInstanceUIDs={study}&initialSeriesInstanceUID={series}``
* Orthanc Explorer 2: ``http://orthanc:8042/ui/app/#/filtered-studies?StudyInstanceUID={study}&expand=series``
* Stone Web Viewer: ``http://orthanc:8042/stone-webviewer/index.html?study={study}&series={series}``
* Weasis: ``weasis://%24dicom%3Ars%20--url%20%22https%3A%2F%2Fpacs.example%2Fdicom-web%22%20-r%20%22studyUID%3D{study}%22``

Values are percent-encoded (every character but ``A-Z a-z 0-9 - . _ ~``), so a value can
never add a parameter, a fragment or a path; a value that is not known (a study without an
analysed series, a finding without a key slice) becomes the empty string. The template is
checked once, when the settings are read: see :func:`check_template`.
"""

from __future__ import annotations

import re
from urllib.parse import quote

PLACEHOLDERS = ("study", "series", "instance")
#: schemes a link may open: web viewers, and Weasis' own protocol handler
SCHEMES = ("http", "https", "weasis")
MAX_LENGTH = 2000

_FIELD = re.compile(r"\{([^{}]*)\}")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def check_template(template: str) -> str:
    """``template`` unchanged when usable; else ``ValueError`` saying what is wrong."""
    if not template:
        return template
    name = "NODULEFLOW_VIEWER_URL_TEMPLATE"
    if len(template) > MAX_LENGTH or any(c.isspace() or ord(c) < 32 for c in template):
        raise ValueError(f"{name} must be one URL without spaces, at most {MAX_LENGTH} characters")
    scheme = _SCHEME.match(template)
    if scheme is None or scheme.group(1).lower() not in SCHEMES:
        raise ValueError(
            f"{name} must start with {', '.join(s + ':' for s in SCHEMES)}; got {template[:40]!r}"
        )
    fields = _FIELD.findall(template)
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise ValueError(
            f"{name}: unknown placeholder {', '.join('{' + f + '}' for f in unknown)}; "
            f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    rest = _FIELD.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError(f"{name}: unbalanced brace")
    if "{study}" not in template:
        raise ValueError(f"{name} must contain {{study}}")
    return template


def viewer_url(template: str, *, study: str, series: str = "", instance: str = "") -> str | None:
    """The viewer link for these UIDs (percent-encoded), or None without a template."""
    if not template:
        return None
    values = {"study": study, "series": series, "instance": instance}
    return _FIELD.sub(lambda m: quote(values[m.group(1)], safe=""), template)
