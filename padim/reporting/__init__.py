"""Turning predictions into what people read: heat-map colours (overlay), results folders (results), the HTML
report (report, with report_metrics, report_pictures, report_text and its templates), model-file summaries
(model_info)."""
