"""The study's report: the brittleness signature, the tables as the report and Jupyter show them, and the one
self-contained HTML file (``report/index.html``) that the pipeline's report step writes.

>>> from mechunlearn.report import StudyOutputs, signature_runs, signature_table, study_tables
>>> outputs = StudyOutputs.from_out("outputs/micro")
>>> signature_table(signature_runs(outputs))       # one row per method, each column next to gold's
>>> study_tables("outputs/micro")["signature/signature"]   # renders in Jupyter
"""

from mechunlearn.report.outputs import ModelInfo, StudyOutputs, StudyOutputsError
from mechunlearn.report.signature import SIGNATURE_COLUMNS, signature_markdown, signature_runs, signature_table
from mechunlearn.report.tables import ReportTable, markdown_html, study_tables

__all__ = ["StudyOutputs", "StudyOutputsError", "ModelInfo", "SIGNATURE_COLUMNS", "signature_runs",
           "signature_table", "signature_markdown", "ReportTable", "markdown_html", "study_tables",
           "build_report", "write_report"]


def __getattr__(name):  # the HTML builder pulls in plotly and circuitsvis: only when asked for
    if name in ("build_report", "write_report"):
        from mechunlearn.report import build

        return getattr(build, name)
    raise AttributeError(name)
