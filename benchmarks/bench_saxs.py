"""Throughput of the batched SAXS engine vs pyFAI ``integrate1d`` on AGIPD 1M frames.

Both integrate the same 1-Mpx 16-module frames to 1000 q bins with solid-angle and
polarisation correction and the Poisson error model, in the same process, and the
speed-up is printed as a ratio.  Frames are streamed through the engine in chunks
so peak memory is bounded by the chunk size, not the run length; peak RSS and the
Python-heap peak (tracemalloc) are printed.

Usage::

    python benchmarks/bench_saxs.py [--frames 256] [--chunk 32] [--pyfai-frames 16]
        [--threads N]

``--threads`` sets both numba's and pyFAI's (OpenMP) thread count so the
comparison is like for like.  Besides the wall-clock ratio the CPU-time ratio is
printed: on a shared machine it is the steadier measure of the work per frame.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=256, help="frames streamed through the engine")
    ap.add_argument("--chunk", type=int, default=32, help="frames per engine call")
    ap.add_argument("--pyfai-frames", type=int, default=16, help="frames integrated one by one by pyFAI")
    ap.add_argument("--npt", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--splits", default="no,bbox")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import numba
    import numpy as np

    from xfel_reduce.geometry import agipd_geometry
    from xfel_reduce.saxs import AzimuthalEngine

    if args.threads:
        numba.set_num_threads(args.threads)
    geom = agipd_geometry()
    rng = np.random.default_rng(1)
    print(f"threads: numba={numba.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for split in args.splits.split(","):
        t0 = time.perf_counter()
        eng = AzimuthalEngine.from_geometry(geom, 2.0, 9.3, args.npt, split=split, polarisation=0.99)
        t_build = time.perf_counter() - t0
        # A small pool of realistic frames, cycled: generating 1-Mpx Poisson frames
        # costs more than integrating them and is not what is measured here.
        pool = rng.poisson(2.0, (args.chunk,) + eng.frame_shape).astype(np.float32)
        mask = (rng.random(pool.shape) < 0.01).astype(np.uint32)
        eng.integrate(pool[:2], mask[:2])  # JIT / cache warm-up

        def stream(with_mask: bool) -> tuple[float, float, int]:
            """Stream args.frames frames in chunks; returns wall, CPU time, heap peak."""
            tracemalloc.start()
            c0, t0 = time.process_time(), time.perf_counter()
            done = 0
            while done < args.frames:
                n = min(args.chunk, args.frames - done)
                eng.integrate(pool[:n], mask[:n] if with_mask else None)
                done += n
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return wall, cpu, peak

        t_eng, c_eng, heap_peak = stream(False)
        t_engm, c_engm, heap_peak_m = stream(True)
        heap_peak = max(heap_peak, heap_peak_m)

        ai = eng.integrator
        kw = dict(unit="q_nm^-1", method=(split, "csr", "cython"), error_model="poisson",
                  polarization_factor=0.99, correctSolidAngle=True)
        img = pool[0].reshape(eng.image_shape)
        ai.integrate1d(img, args.npt, **kw)  # pyFAI builds its CSR on the first call
        c0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(args.pyfai_frames):
            res = ai.integrate1d(pool[i % args.chunk].reshape(eng.image_shape), args.npt, **kw)
        t_pf = time.perf_counter() - t0
        c_pf = time.process_time() - c0
        # sanity: same answer on the last frame (no dynamic mask in the pyFAI call)
        i_chk, _ = eng.integrate(pool[(args.pyfai_frames - 1) % args.chunk])
        ok = res.sum_normalization > 0
        rel = float(np.max(np.abs(i_chk[0][ok] / res.intensity[ok] - 1)))

        fps_pf = args.pyfai_frames / t_pf
        cpu_pf = c_pf / args.pyfai_frames
        for label, wall, cpu in (("same work as pyFAI (no per-frame mask)", t_eng, c_eng),
                                 ("with 1 % per-frame CORR masks", t_engm, c_engm)):
            fps = args.frames / wall
            print(
                f"split={split:4s} engine {fps:7.1f} frames/s vs pyFAI integrate1d {fps_pf:6.1f} frames/s: "
                f"ratio {fps / fps_pf:5.1f}x wall, {cpu_pf / (cpu / args.frames):5.1f}x CPU time  [{label}]"
            )
        print(f"split={split:4s} build {t_build:.1f} s, max rel diff vs pyFAI {rel:.1e}, "
              f"engine heap peak {heap_peak / 2**20:.0f} MiB for chunks of {args.chunk}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the whole benchmark: {rss:.0f} MiB (pool of {args.chunk} frames + masks + 2 engines)")


if __name__ == "__main__":
    main()
