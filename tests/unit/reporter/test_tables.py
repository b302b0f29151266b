"""The reporter loads highdicom's standard tables when it starts, not in the first report."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_preload_loads_every_table_once_in_a_fresh_process() -> None:
    script = textwrap.dedent(
        """
        from highdicom import _standard_utils as standard
        from services.reporter.dicom import tables

        def sizes():
            return [getattr(standard, n).cache_info().currsize for n in tables.LOADERS]

        before = sizes()
        loaded = tables.preload()
        print(before, loaded, sizes())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["[0,", "0,", "0]", "3", "[1,", "1,", "1]"]
