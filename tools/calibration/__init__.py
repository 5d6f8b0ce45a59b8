"""Calibration scripts (tools, not runtime): false-positive rates, power and CI coverage of every test family.

``python -m tools.calibration.clustering`` and ``python -m tools.calibration.routing``
write ``reports/calibration/``. They use the demo generator and are left out of the installed distribution.
"""
