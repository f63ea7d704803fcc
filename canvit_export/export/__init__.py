"""One module per export target, each `export_X(...) -> Manifest`: onnx, openvino, tensorrt, coreml."""
