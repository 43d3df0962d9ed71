"""Studies: a plan of runs and a report, run by one driver.

Tooling for scripts and tests, never imported by the app itself.
"""
