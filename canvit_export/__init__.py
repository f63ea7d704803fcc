"""canvit-export: the CanViT glimpse step as ONNX, TensorRT, OpenVINO and Core ML artifacts, with parity checks."""

import importlib.metadata

__version__ = importlib.metadata.version("canvit-export")
