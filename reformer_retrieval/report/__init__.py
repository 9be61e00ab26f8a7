"""The dedup review page: one self-contained HTML file from a dedup output directory.

* `reformer_retrieval.report.run`: read ``clusters.parquet``, ``pairs.parquet``, ``summary.json``;
* `reformer_retrieval.report.near`: the candidate pairs just below the threshold (sampled);
* `reformer_retrieval.report.diff`: word-level inline diffs with folded equal runs;
* `reformer_retrieval.report.gather`: everything the page shows (`gather_report`);
* `reformer_retrieval.report.svg`: the histogram and the precision-recall curve;
* `reformer_retrieval.report.html`: the page itself (`render_html`, `write_report`; template in ``assets/``).

Example:
    >>> from reformer_retrieval.report import gather_report, write_report  # doctest: +SKIP
    >>> write_report(gather_report("dedup_out/"), "report.html")  # doctest: +SKIP
"""

from reformer_retrieval.report.gather import ReportData, ReportOptions, gather_report
from reformer_retrieval.report.html import render_html, write_report

__all__ = ["ReportData", "ReportOptions", "gather_report", "render_html", "write_report"]
