"""CXI files of SFX hits for CrystFEL, with the event list and the geometry file.

Layout (one file per run chunk; only hit frames are written)::

    /cxi_version                                   150
    /entry_1/data_1/data                           soft link → detector_1/data
    /entry_1/instrument_1/detector_1/data          float32 (N, modules·512, 128), photons
    /entry_1/instrument_1/detector_1/mask          uint32  (N, modules·512, 128), 0 = good
    /entry_1/instrument_1/detector_1/distance      m
    /entry_1/instrument_1/source_1/energy          J
    /entry_1/trainId, pulseId, cellId              (N,)
    /entry_1/result_1/nPeaks                       int32   (N,)
    /entry_1/result_1/peakXPosRaw, peakYPosRaw     float32 (N, max_peaks)
    /entry_1/result_1/peakTotalIntensity           float32 (N, max_peaks)
    /entry_1/result_1/peakNPixels, peakSNR         (N, max_peaks)

The detector array is the "slab" of all AGIPD modules (16 of a 1M, 8 of a 500K) stacked along slow scan,
whatever modules were processed: CrystFEL needs one fixed layout matching the
``.geom`` file, and module ``m`` always sits at rows ``m·512 … m·512+511``.  Modules
that were not processed are zero and flagged bad (``MISSING_MODULE``) in the mask.
Peak positions are in the same slab coordinates (``peakXPosRaw`` = fs,
``peakYPosRaw`` = module·512 + ss) with pixel centres at integers, the Cheetah
convention that CrystFEL expects by default (it applies its half-pixel shift).

The geometry written by :func:`write_crystfel_geom` uses ``dim0 = %`` (frame) and
the slab for ss/fs, points ``data`` and ``mask`` at the paths above and declares any
nonzero mask bit bad (``mask_good = 0x0``, ``mask_bad = 0xffffffff``) and names the peak
list (``peak_list = /entry_1/result_1``, ``peak_list_type = cxi``) so that
``indexamajig --peaks=cxi`` uses the peaks found here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from .euxfel import AtomicH5File, StreamingWriter
from .provenance import attach_provenance

DATA_PATH = "/entry_1/instrument_1/detector_1/data"
MASK_PATH = "/entry_1/instrument_1/detector_1/mask"
RESULT_PATH = "/entry_1/result_1"
#: Mask value of modules absent from the processed data (every bit set = bad).
MISSING_MODULE = np.uint32(0xFFFFFFFF)
#: Joules per keV.
KEV_J = 1.602176634e-16

AGIPD_MODULES = 16
MODULE_SHAPE = (512, 128)


class CxiHitWriter(StreamingWriter):
    """Stream hit frames into a CXI file; the file appears only when closed cleanly.

    Parameters
    ----------
    path
        Output file.
    modules
        Module numbers (0 … ``n_modules`` − 1) of the stacked axis of the frames passed
        to :meth:`append`, in order.
    provenance
        Provenance record (see :func:`xfel_reduce.io.provenance.provenance`).
    max_peaks
        Width of the peak arrays (CrystFEL reads ``nPeaks`` of each row).
    photon_energy_kev, distance_m
        Written as CXI metadata when given.
    compression
        h5py compression for the image data (``None``, ``"gzip"``, ``"lzf"``).
    n_modules
        Modules of the whole detector, i.e. of the slab (16: AGIPD 1M, 8: AGIPD 500K).
    """

    def __init__(self, path: str | os.PathLike, *, modules: Sequence[int], provenance: dict,
                 max_peaks: int = 2048, photon_energy_kev: float | None = None,
                 distance_m: float | None = None, compression: str | None = None,
                 n_modules: int = AGIPD_MODULES):
        self.path = Path(path)
        self.modules = [int(m) for m in modules]
        self.n_modules = int(n_modules)
        if not self.modules or min(self.modules) < 0 or max(self.modules) >= self.n_modules:
            raise ValueError(f"modules {self.modules} must be module numbers 0–{self.n_modules - 1}")
        if len(set(self.modules)) != len(self.modules):
            raise ValueError(f"modules {self.modules} contain duplicates")
        self.max_peaks = int(max_peaks)
        self._atomic = AtomicH5File(self.path)
        f = self._f = self._atomic.__enter__()
        try:
            attach_provenance(f, provenance)
            f["cxi_version"] = 150
            h, w = self.n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1]
            det = f.require_group("entry_1/instrument_1/detector_1")
            # One chunk per module frame: CrystFEL and viewers read frame by frame.
            kw = dict(chunks=(1,) + MODULE_SHAPE, maxshape=(None, h, w), compression=compression)
            det.create_dataset("data", shape=(0, h, w), dtype=np.float32, fillvalue=0.0, **kw)
            det.create_dataset("mask", shape=(0, h, w), dtype=np.uint32, fillvalue=MISSING_MODULE, **kw)
            det["data"].attrs["units"] = "photons"
            det["mask"].attrs["description"] = "EuXFEL BadPixels bits, 0 = good"
            if distance_m is not None:
                det["distance"] = float(distance_m)
                det["distance"].attrs["units"] = "m"
            if photon_energy_kev is not None:
                src = f.require_group("entry_1/instrument_1/source_1")
                src["energy"] = float(photon_energy_kev) * KEV_J
                src["energy"].attrs["units"] = "J"
            f["entry_1/data_1/data"] = h5py.SoftLink(DATA_PATH)
            ent = f["entry_1"]
            for key, dt in (("trainId", np.uint64), ("pulseId", np.uint64), ("cellId", np.uint16)):
                ent.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1024,))
            res = f.require_group("entry_1/result_1")
            res.create_dataset("nPeaks", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1024,))
            for key, dt in (("peakXPosRaw", np.float32), ("peakYPosRaw", np.float32),
                            ("peakTotalIntensity", np.float32), ("peakSNR", np.float32),
                            ("peakNPixels", np.int32)):
                res.create_dataset(key, shape=(0, self.max_peaks), maxshape=(None, self.max_peaks),
                                   dtype=dt, chunks=(16, self.max_peaks), fillvalue=0)
        except BaseException:
            self._atomic.__exit__(RuntimeError, None, None)
            raise
        self.n_frames = 0

    def append(self, data: np.ndarray, mask: np.ndarray | None, train_ids: np.ndarray,
               pulse_ids: np.ndarray, cell_ids: np.ndarray, peaks) -> None:
        """Append hit frames.

        Parameters
        ----------
        data
            ``(n, n_mod, 512, 128)`` corrected frames in the module order given at
            construction.
        mask
            Same shape (or ``None`` = all good), nonzero = bad.
        train_ids, pulse_ids, cell_ids
            ``(n,)`` identifiers of the frames.
        peaks
            :class:`xfel_reduce.sfx.PeakList` of exactly these ``n`` frames, with
            ``module`` indexing the stacked axis of ``data``.
        """
        data = np.asarray(data)
        n = data.shape[0]
        if data.shape[1:] != (len(self.modules),) + MODULE_SHAPE:
            raise ValueError(f"{self.path.name}: frames of shape {data.shape[1:]} do not match "
                             f"{len(self.modules)} modules × {MODULE_SHAPE}")
        if len(peaks) != n or any(len(np.asarray(a)) != n for a in (train_ids, pulse_ids, cell_ids)):
            raise ValueError(f"{self.path.name}: {n} frames but peak list / ids of other lengths")
        if mask is not None and np.shape(mask) != data.shape:
            raise ValueError(f"{self.path.name}: mask shape {np.shape(mask)} != data shape {data.shape}")
        if n == 0:
            return
        f = self._f
        lo, hi = self.n_frames, self.n_frames + n
        for key in ("data", "mask"):
            f[DATA_PATH if key == "data" else MASK_PATH].resize(hi, axis=0)
        slab = np.zeros((n, self.n_modules) + MODULE_SHAPE, np.float32)
        slab_mask = np.full((n, self.n_modules) + MODULE_SHAPE, MISSING_MODULE, np.uint32)
        slab[:, self.modules] = data
        slab_mask[:, self.modules] = 0 if mask is None else np.asarray(mask).astype(np.uint32)
        f[DATA_PATH][lo:hi] = slab.reshape(n, -1, MODULE_SHAPE[1])
        f[MASK_PATH][lo:hi] = slab_mask.reshape(n, -1, MODULE_SHAPE[1])
        for key, arr in (("trainId", train_ids), ("pulseId", pulse_ids), ("cellId", cell_ids)):
            ds = f["entry_1"][key]
            ds.resize(hi, axis=0)
            ds[lo:hi] = np.asarray(arr).astype(ds.dtype)
        res = f[RESULT_PATH]
        k = np.minimum(peaks.n_peaks, self.max_peaks)
        res["nPeaks"].resize(hi, axis=0)
        res["nPeaks"][lo:hi] = k
        mod_numbers = np.asarray(self.modules, np.float32)[peaks.module.astype(np.intp)]
        cols = {
            "peakXPosRaw": peaks.fs,
            "peakYPosRaw": mod_numbers * MODULE_SHAPE[0] + peaks.ss,
            "peakTotalIntensity": peaks.intensity,
            "peakSNR": peaks.snr,
            "peakNPixels": peaks.npix,
        }
        # Row index of each peak inside its frame, to scatter the flat list.
        rank = np.arange(peaks.frame.size) - np.repeat(peaks.offsets[:-1], peaks.n_peaks)
        keep = rank < self.max_peaks
        for key, vals in cols.items():
            block = np.zeros((n, self.max_peaks), res[key].dtype)
            block[peaks.frame[keep], rank[keep]] = np.asarray(vals)[keep]
            res[key].resize(hi, axis=0)
            res[key][lo:hi] = block
        self.n_frames = hi

    def close(self) -> Path:
        """Finish the file (atomic rename) and return its path."""
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Discard the partial file."""
        self._atomic.__exit__(RuntimeError, None, None)


def cxi_frame_count(path: str | os.PathLike) -> int:
    """Number of frames in a CXI file written by :class:`CxiHitWriter`."""
    with h5py.File(path, "r") as f:
        if DATA_PATH not in f:
            raise ValueError(f"{path} is not a CXI hit file: no {DATA_PATH}")
        return int(f[DATA_PATH].shape[0])


def write_event_list(path: str | os.PathLike, cxi_files: Iterable[str | os.PathLike]) -> int:
    """Write a CrystFEL event list (``<file> //<frame>`` per line) for CXI files.

    File names are written as absolute paths so the list works from any directory.
    Returns the number of events.
    """
    path = Path(path)
    lines = []
    for cxi in cxi_files:
        cxi = Path(cxi).resolve()
        lines += [f"{cxi} //{i}\n" for i in range(cxi_frame_count(cxi))]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return len(lines)


def write_crystfel_geom(geom, path: str | os.PathLike, *, photon_energy_kev: float, distance_m: float,
                        adu_per_photon: float = 1.0) -> Path:
    """Write a CrystFEL ``.geom`` for CXI files of :class:`CxiHitWriter`.

    Parameters
    ----------
    geom
        ``extra_geom.AGIPD_1MGeometry`` or ``AGIPD_500K2GGeometry`` (all modules: the
        slab of :class:`CxiHitWriter` with the same ``n_modules``).
    photon_energy_kev, distance_m
        Beam energy and detector distance (``photon_energy``, ``clen``).
    adu_per_photon
        Units of the data per photon (1 for CORR data in photons).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    e_ev = float(photon_energy_kev) * 1000.0
    try:
        geom.write_crystfel_geom(
            str(tmp), data_path=DATA_PATH, mask_path=MASK_PATH, dims=("frame", "ss", "fs"),
            adu_per_ev=adu_per_photon / e_ev, clen=float(distance_m), photon_energy=e_ev,
        )
        text = tmp.read_text()
        # CrystFEL: a pixel is bad if any mask_bad bit is set; BadPixels uses all 32.
        marker = f"mask = {MASK_PATH} ;"
        if marker not in text:
            raise RuntimeError(f"extra-geom wrote no mask line ({marker!r}); cannot add mask_good/mask_bad")
        text = text.replace(marker, marker + "\nmask_good = 0x0\nmask_bad = 0xffffffff", 1)
        # Without these CrystFEL ignores the peaks in the CXI file (indexamajig
        # --peaks=cxi reads them only where the geometry says; CrystFEL geometry manual).
        text = text.replace(marker, f"peak_list = {RESULT_PATH}\npeak_list_type = cxi\n" + marker, 1)
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
