"""canvit-export: the CanViT glimpse step as ONNX, TensorRT, OpenVINO and Core ML artifacts, with parity checks."""

__version__ = "0.1.0"
