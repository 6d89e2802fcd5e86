"""The regularization report: one self-contained HTML page per study (``GET /v1/studies/{name}/report``,
``regsearch report NAME -o report.html``).

:func:`gather` reads what the page shows through the service's own functions (the study, the best with
its interval, ties and robust ranges, the margin over the reference, the importances, the export's
rows); :func:`render` draws it with Plotly (:mod:`._figures`) into one page with plotly.js inlined
(:mod:`._page`). Private modules behind this ``__init__``.
"""

from service.report._data import FULL_TRAINING_SET, ReportData, TrialPoint, gather
from service.report._figures import FIGURES, curve_runs
from service.report._page import how_sure, plotly_js, render

__all__ = ["FIGURES", "FULL_TRAINING_SET", "ReportData", "TrialPoint", "curve_runs", "gather", "how_sure", "plotly_js", "render"]
