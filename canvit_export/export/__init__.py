"""One module per export target: onnx (this issue's), and later tensorrt, openvino, coreml."""
