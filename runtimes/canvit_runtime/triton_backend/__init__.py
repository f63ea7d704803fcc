"""The Triton Python-backend model (model.py) that `canvit-export triton` copies into a model repository."""

from pathlib import Path

MODEL_PY = Path(__file__).with_name("model.py")
