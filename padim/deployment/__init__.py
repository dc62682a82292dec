"""Running a fitted model elsewhere: ONNX export, torch-free inference bundles, the HTTP service."""
