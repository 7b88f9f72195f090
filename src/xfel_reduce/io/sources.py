"""EuXFEL file names and the project's own output sources.

Source names of the facility's devices live in the instrument profiles
(:data:`xfel_reduce.config.INSTRUMENTS`) and are resolved per run
(:func:`xfel_reduce.io.trains.resolve_sources`); detector module sources are found in
the files by their pattern (:func:`xfel_reduce.io.runs.raw_module_source`).
"""
from __future__ import annotations

ANNOTATION_SOURCE = "SPB_XFEL_REDU/ANNOTATION/FRAMES:output"
#: Per-frame peak tables of SFX runs (``n_peaks``, peak-count ``hit``).
SFX_SOURCE = "SPB_XFEL_REDU/SFX/PEAKS:output"
#: Annotation rows of the kept frames of an SPI/SFX run (:mod:`xfel_reduce.kept`).
KEPT_SOURCE = "SPB_XFEL_REDU/KEPT/FRAMES:output"

#: AGIPD ``bunchStructure.repetitionRate`` (MHz, as the device records it) per frame
#: stride in 4.5 MHz buckets.
REPETITION_RATE_MHZ = {1: 4.5, 2: 2.2, 4: 1.1, 8: 0.5}


#: The same, keyed as extra-redu's lit-frame finder reads the rate (one decimal).
RATE_TO_STRIDE = {f"{rate:.1f}": stride for stride, rate in REPETITION_RATE_MHZ.items()}


def stride_of_rate(rate_mhz: float) -> int:
    """Frame stride (4.5 MHz buckets) of a recorded AGIPD repetition rate."""
    try:
        return RATE_TO_STRIDE[f"{float(rate_mhz):.1f}"]
    except KeyError:
        raise ValueError(f"repetitionRate {rate_mhz} MHz is not one of "
                         f"{sorted(REPETITION_RATE_MHZ.values())}") from None


#: AGIPD ``gainModeIndex``: 0 adaptive, then fixed high, medium, low gain.
GAIN_MODE_ADAPTIVE = 0
GAIN_MODE_FIXED = {0: 1, 1: 2, 2: 3}


def raw_filename(run: int, module: int, sequence: int) -> str:
    return f"RAW-R{run:04d}-AGIPD{module:02d}-S{sequence:05d}.h5"


def da_filename(run: int, sequence: int) -> str:
    return f"RAW-R{run:04d}-DA01-S{sequence:05d}.h5"


def aggregator_filename(run: int, aggregator: str, sequence: int) -> str:
    """``RAW-R0042-AGIPD1MCTRL00-S00000.h5`` and the like."""
    return f"RAW-R{run:04d}-{aggregator}-S{sequence:05d}.h5"


#: Detector-module aggregators (AGIPD00, JNGFR01, LPD03, DSSC15, …): everything else in
#: a run folder holds train-level data (DA01, AGIPD1MCTRL00, JNGFRCTRL00, …).
DETECTOR_AGGREGATOR_RE = r"^(AGIPD|JNGFR|LPD|DSSC|EPIX)\d\d$"


def corr_filename(run: int, module: int, sequence: int) -> str:
    return f"CORR-R{run:04d}-AGIPD{module:02d}-S{sequence:05d}.h5"


def kept_table_filename(run: int, sequence: int) -> str:
    """Annotation rows of a sequence's kept frames, beside its kept CORR files."""
    return f"REDU-R{run:04d}-KEPT-S{sequence:05d}.h5"


# -- spectroscopy products (JUNGFRAU layout facts live in xfel_reduce.detectors.jungfrau) --
SPECTRA_SOURCE = "HED_XFEL_REDU/SPECTROSCOPY/JNGFR{module:02d}:output"
