//! HTML pages: the runs index and one run's live report.
