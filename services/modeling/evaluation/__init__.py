"""Judging a model on phantoms: held-out cases (``evalcases``), FROC/CPM scoring (``froc``),
per-scan outcomes and the ``noduleflow evaluate`` driver (``evaluate``), the tables
(``report``), and the candidate rescoring and diameter calibration fitted on validation
phantoms (``rescoring``)."""
