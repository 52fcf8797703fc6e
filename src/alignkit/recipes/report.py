"""``alignkit report RUN_DIR``: one self-contained HTML page (plus its PNGs) for a run folder.

See ``alignkit.evaluation.report`` for what the page holds; stages or files a run lacks are
skipped with a note on the page.
"""

from __future__ import annotations

import logging

from alignkit.config import ReportConfig
from alignkit.errors import UserError

log = logging.getLogger("alignkit.report")


def main(cfg: ReportConfig):
    from alignkit.evaluation.report import build_report

    # 1. The run folder.
    if not cfg.run_dir:
        raise UserError("give the run folder: alignkit report RUN_DIR (e.g. runs/demo)")
    # 2. The page and its figures.
    report = build_report(cfg.run_dir, cfg.output, cfg.frontier, cfg.samples)
    log.info("report: %d sections, %d figures, %d notes", len(report.sections),
             len(report.figures), len(report.notes))
    print(f"report: {report.path}")
    return report
