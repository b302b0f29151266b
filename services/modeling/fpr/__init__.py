"""The second stage's recipe: mine candidates from stage one, train the patch classifier,
calibrate it and choose the operating point (:mod:`services.analysis.stage2` runs it)."""
