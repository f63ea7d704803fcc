# Issue 29's canvas series: CanViT-B (seeded random weights, the Quick start's readouts) at canvas 16, 32, 64 and 128
# (scenes 256 to 2048 px), exported, converted, checked (bench's rollout error against eager) and benched in one
# interleaved run, from the repository root; other jobs shared the machine's 2 cores during this run.
for pair in 16:256 32:512 64:1024 128:2048; do
  c=${pair%%:*}; s=${pair##*:}
  R="--random-weights --canvas $c --scene $s --readout segmentation,classification"
  .venv/bin/canvit-export onnx $R --out m/c$c
  .venv/bin/canvit-export onnx $R --bf16 --out m/c$c-bf16
  .venv/bin/canvit-export openvino --artifact m/c$c --out m/c$c-ov
  .venv/bin/canvit-export openvino --artifact m/c$c-bf16 --out m/c$c-ov-bf16
  .venv/bin/canvit-export openvino --artifact m/c$c --int8 --out m/c$c-ov-int8
done
.venv/bin/canvit-export bench --artifacts m/c{16,32,64,128} m/c{16,32,64,128}-ov m/c{16,32,64,128}-ov-bf16 \
  m/c{16,32,64,128}-ov-int8 --runtimes onnxruntime,openvino --threads 2 --iters 20 --no-peer --baselines '' --groups-in-turn \
  --out reports/canvas-series
