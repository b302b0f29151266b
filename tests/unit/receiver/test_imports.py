"""Import structure of the receiver, checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys

from pynetdicom import _config, association, dimse, dimse_messages, dul, transport

owners = [_config, association, dimse, dimse_messages, dul, transport,
          transport.AssociationSocket, dimse.DIMSEServiceProvider,
          dul.DULServiceProvider, association.Association]
before = [dict(vars(owner)) for owner in owners]

import services.receiver.child
import services.receiver.prefork

assert "services.receiver.main" not in sys.modules, "prefork/child import main"

import services.receiver.fast.commands
import services.receiver.fast.fastpath
import services.receiver.fast.tempfiles
import services.receiver.fast.wakeups
import services.receiver.main

for owner, then in zip(owners, before, strict=True):
    now = vars(owner)
    changed = [k for k in then.keys() | now.keys() if now.get(k) is not then.get(k)]
    assert not changed, f"importing patched {owner}: {changed}"
print("ok")
"""


def test_prefork_and_child_do_not_import_main_and_imports_patch_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
