"""SAXS/WAXS: batched azimuthal integration, run averages and sphere fits.

The reduction of a SAXS run is one azimuthal integration per detector frame
(hundreds of frames per train, ten trains per second), so the integration has to
be much faster than calling :meth:`pyFAI.AzimuthalIntegrator.integrate1d` frame by
frame, while giving exactly pyFAI's answer.

How the engine works
--------------------
pyFAI's sparse ("CSR") integrators describe the whole integration as a matrix
``A`` of shape ``(n_bins, n_pixels)``: ``A[b, p]`` is the fraction of pixel ``p``
that falls into bin ``b`` (1 or 0 without pixel splitting, fractions with
bounding-box splitting).  For one frame pyFAI computes, per bin,

* ``signal = Σ_p A[b,p]·x_p``  (masked / non-finite pixels contribute nothing),
* ``norm   = Σ_p A[b,p]·ω_p`` with ``ω = flat × polarisation × solid angle``,
* ``var    = Σ_p A[b,p]²·max(1, x_p)`` (pyFAI's ``error_model="poisson"``),

and returns ``I = signal / norm`` and ``σ = √var / norm``.

:class:`AzimuthalEngine` lets pyFAI build that very matrix (one ``integrate1d``
call at construction, so binning, range, mask and splitting are pyFAI's own),
stores it pixel-wise (without splitting: one bin index per pixel; with
bounding-box splitting: first bin + a few consecutive fractions per pixel), and
then applies it to a whole batch of frames with a compiled scatter-add that
streams each frame from memory once into per-frame bin accumulators that stay in
the CPU cache (numba, parallel over frames).  The normalisation Σc·ω is
precomputed; only pixels invalid in a given frame (per-frame AGIPD CORR mask,
NaN/inf) are subtracted, exactly reproducing pyFAI's dynamic masking.  Results
agree with ``integrate1d`` to ~1e-7 relative; accumulation is in float64.

Run averages
------------
:class:`SaxsAccumulator` keeps per-bin sums (count, ΣI, ΣI², Σσ²) for all X-ray
frames, laser-on and laser-off frames, plus a per-pixel sum image for the 2-D
average.  Sums are exactly mergeable, so the run result does not depend on how the
run was split into chunks.  (It is deliberately not built on
``aggregate.Moments``: bins can be empty in single frames because of dynamic
masks, and the per-bin valid-frame count must follow that.)

Model
-----
:func:`sphere_form_factor` and :func:`fit_sphere` fit a monodisperse homogeneous
sphere plus a flat (or quadratic) background to I(q).

Package layout: :mod:`.engine` (integration), :mod:`.accumulator` (run sums and
sphere fits), :mod:`.driver` (the one pass's reducer, the gather, partial and REDU
files).
"""
from .accumulator import GROUPS, SaxsAccumulator, fit_sphere, sphere_form_factor, sphere_intensity, sphere_volume_nm3
from .driver import (SAXS_SOURCE, SaxsSequenceReducer, gather_partials, gather_run, integrate_chunk, integrate_frames,
                     integrate_sequence, read_annotation, write_frames_redu, write_partial)
from .engine import SUPPORTED_UNITS, AzimuthalEngine

__all__ = [
    "GROUPS", "SAXS_SOURCE", "SUPPORTED_UNITS",
    "AzimuthalEngine",
    "SaxsAccumulator", "fit_sphere", "sphere_form_factor", "sphere_intensity", "sphere_volume_nm3",
    "SaxsSequenceReducer", "integrate_frames", "integrate_chunk", "integrate_sequence", "read_annotation",
    "write_frames_redu", "write_partial", "gather_partials", "gather_run",
]
