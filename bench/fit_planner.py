"""The fit planner's error on every measured run it has, each predicted by a fit that did not see it
(leave-one-out), and the time a prediction takes (it runs as the user types: target <= 5 ms).

    .venv/bin/python bench/fit_planner.py

The runs: docs/benchmarks.md's rows and bench/fit_grid.py's lines (training/planner/reference.py). For each run
with a measured peak or tokens/s: the defaults are fitted again on every other run (the run's own group included,
less the run), and the run is predicted by them, as a team's first run on that GPU would be; then, for its
(GPU, backend, precision) group, the calibration on the group's other runs predicts it, as once the team has
measured the others. Printed: each run's measured and predicted figures, and the median absolute error of each
way, against the targets (peak <= 10%, tokens/s <= 15%, on configs not used for the fit).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))
from training.planner import calibrate, levers  # noqa: E402
from training.planner.estimate import GiB, predict  # noqa: E402


def describe(s: calibrate.Sample) -> str:
    st = s.setup
    return (f"{s.gpu.replace('NVIDIA ', '')[:9]:9s} {st.backend:7s} {s.shape.total_params / 1e9:4.2f}B "
            f"{'4bit' if st.load_in_4bit else '16b '} s{st.max_length:<5d} mb{st.micro_batch:<3d}"
            f"{'gc ' if st.gradient_checkpointing else '-- '}{'tiled ' if st.tiled_mlp else ''}")


def leave_one_out(samples: list[calibrate.Sample]) -> list[dict]:
    out = []
    for i, s in enumerate(samples):
        if not (s.peak_bytes or s.tokens_per_s):
            continue
        others = samples[:i] + samples[i + 1:]
        defaults = calibrate.defaults_from(others, s.setup.backend, s.setup.load_in_4bit, s.gpu)
        group = [o for o in others if calibrate.group_key(o.gpu, o.setup.backend, o.setup.load_in_4bit)
                 == calibrate.group_key(s.gpu, s.setup.backend, s.setup.load_in_4bit)]
        calibrated = calibrate.calibrate(group, defaults, "group") if group else None
        row = {"sample": s, "group_runs": len(group)}
        for name, k in (("defaults", defaults), ("calibrated", calibrated)):
            if k is None:
                continue
            p = predict(s.shape, s.setup, k, gpu_name=s.gpu, mean_tokens=s.mean_tokens)
            row[name] = p
            if s.peak_bytes:
                row[f"{name}_peak_err"] = p.peak_bytes / s.peak_bytes - 1
            if s.tokens_per_s:
                row[f"{name}_rate_err"] = p.tokens_per_s / s.tokens_per_s - 1
        out.append(row)
    return out


def median_abs(rows, key) -> tuple[float | None, int]:
    errs = [abs(r[key]) for r in rows if key in r]
    return (statistics.median(errs) if errs else None), len(errs)


def prediction_ms(samples: list[calibrate.Sample], repeats: int = 200) -> tuple[float, float]:
    """One prediction as the form makes it: predict, plus the levers and the fastest fit on an 80 GB GPU."""
    s = next(x for x in samples if x.setup.backend == "unsloth" and not x.setup.load_in_4bit)
    constants_of = lambda st: calibrate.default_constants(st.backend, st.load_in_4bit, s.gpu)  # noqa: E731
    constants_of(s.setup)  # the defaults are fitted once per process (cached), as in the server
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict(s.shape, s.setup, constants_of(s.setup), gpu_name=s.gpu, total_steps=1000)
        levers.levers(s.shape, s.setup, constants_of, 80e9, gpu_name=s.gpu)
        levers.fastest_fit(s.shape, replace(s.setup, grad_accum=4), constants_of, 80e9, gpu_name=s.gpu)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * len(times))]


def main() -> None:
    samples = calibrate.reference_samples()
    rows = leave_one_out(samples)
    print(f"{len(rows)} measured runs ({sum(1 for s in samples if s.oom)} out of memory, used as floors)\n")
    print(f"{'run':52s} {'peak GiB':>8s} {'dflt':>6s} {'calib':>6s}  {'tok/s':>7s} {'dflt':>7s} {'calib':>7s}  group")
    for r in rows:
        s = r["sample"]
        d, c = r.get("defaults"), r.get("calibrated")
        peak = f"{s.peak_bytes / GiB:8.2f} {d.peak_bytes / GiB:6.2f} " + (f"{c.peak_bytes / GiB:6.2f}" if c else "     -") \
            if s.peak_bytes else f"{'-':>8s} {'':6s} {'':6s}"
        rate = f"{s.tokens_per_s:7.0f} {d.tokens_per_s:7.0f} " + (f"{c.tokens_per_s:7.0f}" if c else "      -") \
            if s.tokens_per_s else f"{'-':>7s} {'':7s} {'':7s}"
        print(f"{describe(s):52s} {peak}  {rate}  {r['group_runs']}")
    print()
    for key, what, target in (("defaults_peak_err", "peak VRAM, defaults (leave-one-out)", 0.10),
                              ("calibrated_peak_err", "peak VRAM, calibrated on the group's other runs", 0.10),
                              ("defaults_rate_err", "tokens/s, defaults (leave-one-out)", 0.15),
                              ("calibrated_rate_err", "tokens/s, calibrated on the group's other runs", 0.15)):
        med, n = median_abs(rows, key)
        verdict = "" if med is None else ("met" if med <= target else "missed")
        print(f"median absolute error, {what}: {'-' if med is None else f'{med:.1%}'} over {n} runs "
              f"(target <= {target:.0%}: {verdict})")
    med, p95 = prediction_ms(samples)
    print(f"\none prediction with its levers and fastest fit: {med:.2f} ms median, {p95:.2f} ms p95 (target <= 5 ms)")
    try:
        from baseline import cpu_loop_ms

        print(f"machine baseline: CPU loop {cpu_loop_ms():.1f} ms (bench/baseline.py)")
    except Exception as exc:  # noqa: BLE001 - the figures stand without it
        print(f"machine baseline not measured: {exc}")


if __name__ == "__main__":
    main()
