"""EuXFEL source names used at SPB with the AGIPD 1M (overridable in the config)."""
from __future__ import annotations

DETECTOR = "SPB_DET_AGIPD1M-1"
RAW_SOURCE = DETECTOR + "/DET/{module}CH0:xtdf"
CORR_SOURCE = DETECTOR + "/CORR/{module}CH0:output"
AGIPD_CONTROL = "SPB_IRU_AGIPD1M1/MDL/FPGA_COMP"
XGM_SOURCE = "SPB_XTD9_XGM/XGM/DOOCS:output"
XGM_CONTROL = "SPB_XTD9_XGM/XGM/DOOCS"
BUNCH_PATTERN_SOURCE = "SPB_RR_SYS/TSYS/UTC-1-S2:outputBunchPattern"
ANNOTATION_SOURCE = "SPB_XFEL_REDU/ANNOTATION/FRAMES:output"

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


#: Aggregator of the AGIPD 1M control device (its own files, own sequence numbering).
AGIPD_CTRL_AGGREGATOR = "AGIPD1MCTRL00"


def aggregator_filename(run: int, aggregator: str, sequence: int) -> str:
    """``RAW-R0042-AGIPD1MCTRL00-S00000.h5`` and the like."""
    return f"RAW-R{run:04d}-{aggregator}-S{sequence:05d}.h5"


#: Detector-module aggregators (AGIPD00, JNGFR01, LPD03, DSSC15, …): everything else in
#: a run folder holds train-level data (DA01, AGIPD1MCTRL00, JNGFRCTRL00, …).
DETECTOR_AGGREGATOR_RE = r"^(AGIPD|JNGFR|LPD|DSSC|EPIX)\d\d$"


def corr_filename(run: int, module: int, sequence: int) -> str:
    return f"CORR-R{run:04d}-AGIPD{module:02d}-S{sequence:05d}.h5"


# -- JUNGFRAU (spectroscopy, e.g. the von Hamos spectrometer at HED) ---------------
#: JUNGFRAU detector name; raw source ``{JF_DETECTOR}/DET/JNGFR01:daqOutput`` and
#: corrected ``…/CORR/JNGFR01:daqOutput`` as extra-data's JUNGFRAU component expects.
JF_DETECTOR = "HED_IA1_JF500K1"
JF_RAW_SOURCE = JF_DETECTOR + "/DET/JNGFR{module:02d}:daqOutput"
JF_CORR_SOURCE = JF_DETECTOR + "/CORR/JNGFR{module:02d}:daqOutput"
#: Slow control of the JUNGFRAU (gain mode, memory cells, exposure).
JF_CONTROL = "HED_IA1_JF500K1/DET/CONTROL"
SPECTRA_SOURCE = "HED_XFEL_REDU/SPECTROSCOPY/JNGFR{module:02d}:output"

#: JUNGFRAU ``gainMode`` values written for dark runs: adaptive, then forced G1, G2.
JF_GAIN_MODE = {0: "dynamicgain", 1: "forceswitchg1", 2: "forceswitchg2"}


def jf_raw_filename(run: int, module: int, sequence: int) -> str:
    return f"RAW-R{run:04d}-JNGFR{module:02d}-S{sequence:05d}.h5"


def jf_corr_filename(run: int, module: int, sequence: int) -> str:
    return f"CORR-R{run:04d}-JNGFR{module:02d}-S{sequence:05d}.h5"
