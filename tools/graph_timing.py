"""Timing for the per-layer benches (tools/moe_bench.py, tools/gelu_bench.py): ``fn(layer)`` for ``layers`` layers'
weights captured in one CUDA graph (so that no layer's weights stay in L2 and no launch cost counts), replayed."""
import torch


def graph_ms_per_layer(fn, layers: int, reps: int = 20) -> float:
    """Milliseconds per layer of ``fn(layer)``, layer in range(layers), as one CUDA graph replayed ``reps`` times."""
    fn(0)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(layers):
            fn(layer)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / layers
