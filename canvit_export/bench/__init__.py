"""canvit-export bench: step latency, throughput, memory, size and error of every artifact x runtime, against
PyTorch eager (fp32) and canvit-pytorch's own browser export (viz.live GlimpseStep) on ONNX Runtime.

Every configuration steps through the same C2F rollout of a real photo with its state carried, and the
configurations take their steps in turn (round-robin), so drift of this shared machine hits all of them alike.
PyTorch eager's state at each glimpse is also the parity reference: each configuration's worst canvas rel-L2 and
cosine over the rollout are measured outside the timed region. Peak resident memory is measured per
configuration in a child process (load + 3 glimpses), since one process's peak mixes them all.
GFLOPs per glimpse: canvit_pytorch.flops.glimpse_flops (paper App. G), for the artifact's canvas and glimpse.

One job per module (this package imports none of them, so that `python -m canvit_export.bench.child` stays light):
  configs.py   the configurations: artifact x runtime (base.TARGETS), the PyTorch baselines, the machine's facts
  timing.py    the round-robin stepper of the configurations, and peak memory through child.py
  flops.py     the step's matrix products read off its graph, and the analytic GFLOPs of a glimpse
  traffic.py   the canvas bytes a glimpse must move (Reads, Writes, canvas readouts) and the triad bandwidth
  floor.py     the floor: the step's matmuls alone, timed on OpenVINO per precision, plus that canvas traffic
  streams.py   multi-stream throughput of stateful IRs on OpenVINO
  report.py    typed rows (BenchRow) and the report (BenchReport): bench.json and bench.md written from them
  chart.py     bench.png
  command.py   `canvit-export bench` (bench_command)
  child.py     the child process that measures one configuration's peak resident memory
"""
