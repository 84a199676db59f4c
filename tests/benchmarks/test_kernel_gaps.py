"""benchmarks/kernel_gaps.py on a small hand-made chrome trace: idle time and the host ops behind kernels."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("kernel_gaps", ROOT / "benchmarks" / "kernel_gaps.py")
kernel_gaps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel_gaps)


def _x(cat, name, ts, dur, tid=1, **args):
    return dict(ph="X", cat=cat, name=name, ts=ts, dur=dur, tid=tid, pid=1, args=args)


def _trace(tmp_path):
    events = [
        _x("cpu_op", "CompiledFunctionBackward", 0, 100),
        _x("cpu_op", "aten::sum", 10, 20),
        _x("cuda_runtime", "cudaLaunchKernel", 12, 2, correlation=1),
        _x("cpu_op", "aten::zero_", 40, 10),
        _x("cuda_runtime", "cudaMemsetAsync", 42, 1, correlation=2),
        _x("cuda_runtime", "cudaLaunchKernel", 60, 2, correlation=3),  # inside the outer op only
        _x("cuda_runtime", "cudaMemsetAsync", 150, 1, correlation=4),  # no host op around it
        _x("kernel", "reduce_kernel<float>", 200, 30, tid=7, correlation=1),
        _x("gpu_memset", "Memset (Device)", 240, 5, tid=7, correlation=2),
        _x("kernel", "triton_poi_fused_add", 250, 10, tid=7, correlation=3),
        _x("gpu_memset", "Memset (Device)", 300, 5, tid=7, correlation=4),
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return path


def test_origins_name_the_enclosing_host_ops(tmp_path):
    events = kernel_gaps.load_events(str(_trace(tmp_path)))
    assert kernel_gaps.kernel_origins(events, "Memset") == {
        "CompiledFunctionBackward > aten::zero_": 1, "(no host op)": 1}
    assert kernel_gaps.kernel_origins(events, "reduce_kernel") == {"CompiledFunctionBackward > aten::sum": 1}
    assert kernel_gaps.kernel_origins(events, "triton_poi") == {"CompiledFunctionBackward": 1}


def test_main_reports_idle_gaps_and_origins(tmp_path, capsys):
    assert kernel_gaps.main([str(_trace(tmp_path)), "--steps", "1", "--min_us", "1", "--origins", "Memset"]) == 0
    out = capsys.readouterr().out
    # GPU events span 200..305 (105 us), busy 30 + 5 + 10 + 5 = 50 us
    assert "first to last 0.10 ms/step, busy 0.05, idle 0.06" in out
    assert "x   1.0  CompiledFunctionBackward > aten::zero_" in out
