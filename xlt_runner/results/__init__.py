"""Run records (``results.json``), across-seed statistics and reports.

``record``: writing/reading a run's record atomically, environment info.
``stats``: Student-t CIs and Welch's t-test over seeds.
``report``: tables, per-language plot, sweep status and export (the ``xlt-report`` command).
"""
from __future__ import annotations

from xlt_runner.results.record import (PER_LANGUAGE_FILE, RESULTS_FILE, UnreadableRecord, environment_info,
                                       is_complete, load_record, read_record, write_per_language_csv)
from xlt_runner.results.stats import mean_ci, welch_p

__all__ = ["PER_LANGUAGE_FILE", "RESULTS_FILE", "UnreadableRecord", "environment_info", "is_complete",
           "load_record", "mean_ci", "read_record", "welch_p", "write_per_language_csv"]
