"""Turning predictions into what people read: heat-map colours, results folders, the HTML report."""
