"""A trained model outside Python training code: ONNX export and the HTTP server."""
