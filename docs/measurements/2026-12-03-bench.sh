# The artifacts and the bench run of 2026-12-03 (CanViT-B, seeded random weights, the Quick start's readouts),
# run from the repository root; other jobs shared the machine's 2 cores during this run.
R="--random-weights --canvas 32 --readout segmentation,classification"
.venv/bin/canvit-export onnx $R --out m/c32
.venv/bin/canvit-export onnx $R --bf16 --out m/c32-bf16
.venv/bin/canvit-export openvino --artifact m/c32 --out m/c32-ov
.venv/bin/canvit-export openvino --artifact m/c32-bf16 --out m/c32-ov-bf16
.venv/bin/canvit-export openvino --artifact m/c32 --int8 --out m/c32-ov-int8
.venv/bin/canvit-export bench --artifacts m/c32 m/c32-ov m/c32-ov-bf16 m/c32-ov-int8 --runtimes onnxruntime,openvino --threads 2 --iters 30 --no-peer --out reports/bench
