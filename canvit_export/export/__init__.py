"""One module per export target, each `export_X(...) -> Manifest`: onnx, openvino, coreml, and int8 (the Q/DQ graph);
artifact holds what they share. TensorRT engines are built on the device (canvit_runtime.engine, canvit_export.trt)."""
