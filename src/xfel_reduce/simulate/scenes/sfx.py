"""Serial crystallography: Bragg spots on a water-ring background, the SFX oracle.

Microcrystals in a liquid jet cross the beam; in a known fraction of the X-ray frames
(``hit_fraction``) a crystal is hit and puts Bragg spots on the detector.  Every
X-ray frame carries the diffuse scattering of the water jet: a ring at
q ≈ 20 nm⁻¹ (the water structure peak at 2.0 Å⁻¹) on a weak flat baseline, weighted
by solid angle.  All photon numbers scale with the XGM pulse energy.

Spots are placed in the lab frame, not in pixel space: a spot centre is a random
point on the detector (uniform over the pixels with q inside ``spot_q_range``); the
expected photons of every pixel of that module are the integral of a 2-D Gaussian
(σ in pixels, drawn from ``spot_sigma_px``) over the pixel's area, computed from the
extra-geom pixel positions.  Spots that straddle the gap between two AGIPD panels
therefore lose the part that falls into the gap, as on the real detector.
Integrated spot intensities are log-uniform over ``spot_photons`` (a decade by
default), so the spot list spans from undetectable to saturating-bright spots.
Photons are Poisson-sampled.

Truth per frame: ``hit`` and ``n_spots``; per spot: frame index (in run order),
module number, ss, fs (fractional, pixel centres at integers), integrated photons,
σ, expected photons in the brightest pixel, local background and the counting SNR
of the brightest pixel ``S / sqrt(S + B + noise_floor²)``, the quantity a
peak finder can see.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr

from ... import geometry
from ..counter_rng import poisson
from ..scene import Scene, SceneContext, TrainBeam

DEFAULTS: dict[str, Any] = {
    "hit_fraction": 0.05,
    # Spots per hit and per simulated module (uniform integer range): the spot density
    # on the detector is a property of the crystals, whatever number of modules is
    # simulated; 16 modules give 80–192 spots per hit.
    "spots_per_module": [5, 12],
    "spot_photons": [300.0, 3000.0],  # integrated photons per spot at the mean pulse energy
    "spot_sigma_px": [1.0, 3.0],
    # Spots of one crystal lie on its reciprocal lattice and so never come closer
    # than the projected lattice spacing (≈ distance·λ/a: 12 px for a = 80 Å at
    # 0.15 m and 9.3 keV); random centres are drawn with this minimum separation.
    "min_spot_separation_px": 15.0,
    "spot_q_range": [3.0, 40.0],  # nm⁻¹
    "water_q": 20.0,  # nm⁻¹, the water structure peak
    "water_q_width": 3.5,  # nm⁻¹, Gaussian σ of the ring
    "water_photons": 1.0,  # per pixel at the ring maximum (normal incidence)
    "baseline_photons": 0.05,  # flat per-pixel background (gas, jet)
    "noise_floor_photons": 0.17,  # detector noise in photons, enters the truth SNR only
    "xgm_mean_uj": 1500.0,
}

#: Half-width of the window (in σ) in which a spot is rendered.
_WINDOW_SIGMA = 5.0


class SfxScene(Scene):
    """Bragg spots in a known subset of frames on a water-ring background."""

    name = "sfx"

    def __init__(self, ctx: SceneContext):
        super().__init__(ctx)
        unknown = sorted(set(ctx.params) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"sfx scene: unknown parameter(s) {unknown}; allowed: {sorted(DEFAULTS)}")
        p = {**DEFAULTS, **ctx.params}
        if not 0.0 <= float(p["hit_fraction"]) <= 1.0:
            raise ValueError(f"sfx scene: hit_fraction={p['hit_fraction']} must be in [0, 1]")
        lo, hi = p["spots_per_module"]
        if not 0 < lo <= hi:
            raise ValueError(f"sfx scene: spots_per_module={p['spots_per_module']} must be 0 < lo <= hi")
        self.p = p
        pos = ctx.positions
        q = geometry.q_map(pos, ctx.photon_energy_kev)
        # Solid angle relative to a pixel at normal incidence, so `water_photons`
        # is the per-pixel level one would see at the ring on a detector face-on.
        sa = geometry.solid_angle(pos)
        dist = np.min(pos[..., 2])
        sa_rel = sa / (200e-6**2 / dist**2)
        ring = np.exp(-0.5 * ((q - p["water_q"]) / p["water_q_width"]) ** 2)
        self.background = (p["water_photons"] * ring * sa_rel + p["baseline_photons"]).astype(np.float32)
        # Candidate spot centres: pixels inside the q range, off the two outermost
        # rows/columns of a module (a spot centred there loses half its photons to the
        # gap between modules, which are rendered independently).  Spots may still
        # straddle the gaps between the panels inside a module.
        qlo, qhi = p["spot_q_range"]
        cand = (q >= qlo) & (q <= qhi)
        cand[:, :2] = cand[:, -2:] = False
        cand[:, :, :2] = cand[:, :, -2:] = False
        self.candidates = np.flatnonzero(cand)
        if self.candidates.size == 0:
            raise ValueError(f"sfx scene: no pixel has q in spot_q_range={p['spot_q_range']} nm⁻¹; "
                             "widen the range or check photon energy and detector distance")
        self.pixel_size = 200e-6  # AGIPD
        self._frames_seen = 0
        self._hit: list[np.ndarray] = []
        self._nspots: list[np.ndarray] = []
        self._spots: list[np.ndarray] = []

    def _spot_centres(self, k: int) -> np.ndarray:
        """Flat pixel indices of up to ``k`` spot centres, pairwise separated in the lab
        by at least ``min_spot_separation_px`` (rejection sampling)."""
        sep2 = (float(self.p["min_spot_separation_px"]) * self.pixel_size) ** 2
        xy = self.ctx.positions[..., :2].reshape(-1, 2)
        chosen: list[int] = []
        taken = np.zeros((0, 2))
        # A fixed number of attempts bounds the work when the detector is crowded.
        for cand in self.rng.choice(self.candidates, size=min(20 * k, self.candidates.size), replace=False):
            if taken.shape[0] and np.min(np.sum((taken - xy[cand]) ** 2, axis=1)) < sep2:
                continue
            chosen.append(int(cand))
            taken = np.vstack([taken, xy[cand]])
            if len(chosen) == k:
                break
        return np.asarray(chosen, dtype=np.int64)

    def _render_spot(self, out: np.ndarray, m: int, ss: float, fs: float, photons: float,
                     sigma: float) -> tuple[float, float]:
        """Add the expected photons of one spot to ``out`` (n_mod, 512, 128).

        Returns the expected photons in the brightest pixel and the background there.
        """
        pos = self.ctx.positions[m]
        i0, j0 = int(round(ss)), int(round(fs))
        # The lab position of the spot centre: the centre pixel's position plus the
        # sub-pixel offset along that pixel's own ss/fs directions.
        ti = i0 - (i0 % 64)
        i_nb = i0 + 1 if i0 + 1 < ti + 64 else i0 - 1
        u_ss = (pos[i_nb, j0] - pos[i0, j0]) / (i_nb - i0)
        j_nb = j0 + 1 if j0 + 1 < 128 else j0 - 1
        u_fs = (pos[i0, j_nb] - pos[i0, j0]) / (j_nb - j0)
        centre = pos[i0, j0] + (ss - i0) * u_ss + (fs - j0) * u_fs
        w = int(np.ceil(_WINDOW_SIGMA * sigma)) + 3  # + panel gap (2 px) margin
        s0, s1 = max(i0 - w, 0), min(i0 + w + 1, pos.shape[0])
        f0, f1 = max(j0 - w, 0), min(j0 + w + 1, pos.shape[1])
        d = pos[s0:s1, f0:f1] - centre
        # Offsets in pixel units along the (orthogonal, equal-length) pixel axes.
        ps2 = self.pixel_size**2
        a = (d @ u_ss) / ps2
        b = (d @ u_fs) / ps2
        inv = 1.0 / sigma
        frac = (ndtr((a + 0.5) * inv) - ndtr((a - 0.5) * inv)) * (ndtr((b + 0.5) * inv) - ndtr((b - 0.5) * inv))
        add = photons * frac
        out[m, s0:s1, f0:f1] += add.astype(np.float32)
        k = np.unravel_index(np.argmax(add), add.shape)
        return float(add[k]), float(self.background[m, s0 + k[0], f0 + k[1]])

    def photons(self, beam: TrainBeam) -> np.ndarray:
        p, rng = self.p, self.rng
        n = len(beam.xray)
        shape = self.ctx.frame_shape
        out = np.zeros((n,) + shape, np.float32)
        hit = np.asarray(beam.xray, bool) & (rng.random(n) < p["hit_fraction"])
        nspots = np.zeros(n, np.int32)
        scale = np.asarray(beam.pulse_energy_uj, np.float64) / p["xgm_mean_uj"]
        lo_i, hi_i = np.log(p["spot_photons"][0]), np.log(p["spot_photons"][1])
        nf = self.p["noise_floor_photons"] ** 2
        spots = []
        for i in np.flatnonzero(beam.xray):
            expected = self.background * np.float32(scale[i])
            if hit[i]:
                n_mod = len(self.ctx.modules)
                lo, hi = p["spots_per_module"]
                k = min(int(rng.integers(round(lo * n_mod), round(hi * n_mod) + 1)), self.candidates.size)
                nspots[i] = k
                flat = self._spot_centres(k)
                k = flat.size
                m, ss, fs = np.unravel_index(flat, shape)
                ss = ss + rng.uniform(-0.5, 0.5, k)
                fs = fs + rng.uniform(-0.5, 0.5, k)
                inten = np.exp(rng.uniform(lo_i, hi_i, k)) * scale[i]
                sig = rng.uniform(*p["spot_sigma_px"], k)
                for s in range(k):
                    peak, bg = self._render_spot(expected, int(m[s]), ss[s], fs[s], inten[s], sig[s])
                    bg *= scale[i]
                    snr = peak / np.sqrt(peak + bg + nf)
                    spots.append((self._frames_seen + i, self.ctx.modules[int(m[s])], int(m[s]),
                                  ss[s], fs[s], inten[s], sig[s], peak, bg, snr))
            out[i] = poisson(rng, expected)
        self._frames_seen += n
        self._hit.append(hit)
        self._nspots.append(nspots)
        if spots:
            self._spots.append(np.array(spots, dtype=np.float64))
        return out

    def truth(self) -> dict[str, Any]:
        hits = np.concatenate(self._hit) if self._hit else np.zeros(0, bool)
        return {"scene": self.name, **self.p, "n_frames": int(hits.size), "n_hits": int(hits.sum()),
                "hit_rate": float(hits.mean()) if hits.size else 0.0}

    def frame_truth(self) -> dict[str, np.ndarray]:
        """Per-frame ``hit``/``n_spots`` and the spot list (``spot_*``, one row per spot)."""
        s = np.concatenate(self._spots) if self._spots else np.zeros((0, 10))
        return {
            "hit": np.concatenate(self._hit) if self._hit else np.zeros(0, bool),
            "n_spots": np.concatenate(self._nspots) if self._nspots else np.zeros(0, np.int32),
            "spot_frame": s[:, 0].astype(np.int64),
            "spot_module": s[:, 1].astype(np.int16),  # module number (0–15)
            "spot_module_index": s[:, 2].astype(np.int16),  # index into the simulated modules
            "spot_ss": s[:, 3].astype(np.float32),
            "spot_fs": s[:, 4].astype(np.float32),
            "spot_photons": s[:, 5].astype(np.float32),
            "spot_sigma_px": s[:, 6].astype(np.float32),
            "spot_peak_photons": s[:, 7].astype(np.float32),
            "spot_background": s[:, 8].astype(np.float32),
            "spot_snr": s[:, 9].astype(np.float32),
        }
