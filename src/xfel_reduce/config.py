"""Workflow configuration: schema validation with messages that name the key."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

#: Trains per chunk of the per-sequence passes (``calibration.trains_per_chunk``).
TRAINS_PER_CHUNK = 4


def trains_per_chunk(config: dict) -> int:
    """``calibration.trains_per_chunk`` of a workflow config (default :data:`TRAINS_PER_CHUNK`)."""
    return int((config.get("calibration") or {}).get("trains_per_chunk", TRAINS_PER_CHUNK))

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the key."""


def modules_of(config: dict) -> list[int]:
    """The config's detector modules: ``modules: 16`` means 0–15, or an explicit list."""
    mods = config.get("modules", 16)
    return list(range(mods)) if isinstance(mods, int) else [int(m) for m in mods]


def load_schema(path: Path | None = None) -> dict:
    path = Path(path or SCHEMA_PATH)
    return yaml.safe_load(path.read_text())


def _key_path(err: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in err.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def validate_config(config: dict, schema: dict | Path | None = None) -> dict:
    """Validate ``config`` against the schema; raise :class:`ConfigError` listing
    every problem as ``key: message``."""
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            msg = e.message
            if e.validator == "additionalProperties":
                msg += " (unknown key: check spelling against config/config.yaml)"
            lines.append(f"  config key {_key_path(e)}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    return config


def load_config(path: str | Path) -> dict:
    """Read and validate a YAML config file."""
    cfg = yaml.safe_load(Path(path).read_text())
    return validate_config(cfg)


# -- instruments and their sources ------------------------------------------------------
# One home for source names. A profile gives the names the facility uses at each
# instrument (FACILITY.md, extra-redu's lit-frame-finder profiles); the run's own
# source list decides where the config is silent (xfel_reduce.io.discovery), and the
# config's `sources` block overrides any of them key by key.
@dataclass(frozen=True)
class InstrumentProfile:
    """Default sources of one EuXFEL instrument.

    Attributes
    ----------
    name, sase
        Instrument (SPB, MID, FXE, HED, SCS, SQS) and the SASE it is on.
    ppl_bit
        Name of its pump-probe-laser bit in ``euxfel_bunch_pattern.PPL_BITS``.
    timeserver, pulse_pattern_decoder, xgm
        Timeserver output, decoder control device and XGM device (``…:output`` is
        its fast data) expected at the instrument.
    agipd, agipd_control, lit_frame_finder
        AGIPD detector name, its control device and the online lit-frame finder.
    jungfrau
        JUNGFRAU detector name used by default at the instrument.
    laser_stage, laser_trigger
        The optical laser's delay line (motor) and trigger-delay devices, where EXtra's
        ``OpticalLaserDelay`` knows them (MID, SQS); elsewhere a delay axis names them.
    """

    name: str
    sase: int
    ppl_bit: str
    timeserver: str
    pulse_pattern_decoder: str
    xgm: str
    agipd: str = ""
    agipd_control: str = ""
    lit_frame_finder: str = ""
    jungfrau: str = ""
    laser_stage: str = ""
    laser_trigger: str = ""

    @property
    def xgm_output(self) -> str:
        return self.xgm + ":output"


INSTRUMENTS: dict[str, InstrumentProfile] = {p.name: p for p in (
    InstrumentProfile("SPB", 1, "LP_SPB", "SPB_RR_SYS/TSYS/TIMESERVER:outputBunchPattern",
                      "SPB_RR_SYS/MDL/BUNCH_PATTERN", "SPB_XTD9_XGM/XGM/DOOCS",
                      "SPB_DET_AGIPD1M-1", "SPB_IRU_AGIPD1M1/MDL/FPGA_COMP",
                      "SPB_IRU_AGIPD1M1/REDU/LITFRM", "SPB_IRDA_JF4M"),
    InstrumentProfile("MID", 2, "LP_SASE2", "MID_RR_UTC/TSYS/TIMESERVER:outputBunchPattern",
                      "MID_RR_SYS/MDL/PULSE_PATTERN_DECODER", "SA2_XTD1_XGM/XGM/DOOCS",
                      "MID_DET_AGIPD1M-1", "MID_EXP_AGIPD1M1/MDL/FPGA_COMP",
                      "MID_EXP_AGIPD1M1/REDU/LITFRM", laser_stage="MID_LAS_COM/MOTOR/DL800",
                      laser_trigger="MID_LAS_COM/CTRL/PPL_PHASE_SHIFTER"),
    InstrumentProfile("HED", 2, "LP_SASE2", "HED_RR_UTC/TSYS/TIMESERVER:outputBunchPattern",
                      "SA2_BR_UTC/MDL/BUNCHPATTERN_DECODER", "HED_XTD6_XGM/XGM/DOOCS",
                      "HED_DET_AGIPD500K2G", "HED_EXP_AGIPD500K2G/MDL/FPGA_COMP",
                      "HED_EXP_AGIPD500K2G/REDU/LITFRM", "HED_IA1_JF500K1"),
    InstrumentProfile("FXE", 1, "LP_FXE", "FXE_RR_SYS/TSYS/TIMESERVER:outputBunchPattern",
                      "SA1_BR_UTC/MDL/BUNCHPATTERN_DECODER", "SA1_XTD2_XGM/XGM/DOOCS",
                      jungfrau="FXE_XAD_JF1M"),
    InstrumentProfile("SCS", 3, "LP_SCS", "SCS_RR_UTC/TSYS/TIMESERVER:outputBunchPattern",
                      "SA3_BR_UTC/MDL/BUNCHPATTERN_DECODER", "SCS_BLU_XGM/XGM/DOOCS"),
    InstrumentProfile("SQS", 3, "LP_SQS", "SQS_RR_UTC/TSYS/TIMESERVER:outputBunchPattern",
                      "SA3_BR_UTC/MDL/BUNCHPATTERN_DECODER", "SQS_DIAG1_XGMD/XGM/DOOCS",
                      laser_stage="SQS_ILH_LAS/MOTOR/DELAY_AX_800", laser_trigger="LA3_LAS_PPL/CTRL/TRGDLY"),
)}


def instrument_profile(name: str) -> InstrumentProfile:
    """The profile of an instrument, with a clear error for an unknown name."""
    try:
        return INSTRUMENTS[str(name).upper()]
    except KeyError:
        raise ConfigError(f"config key instrument: {name!r} is not one of {sorted(INSTRUMENTS)}") from None


def ppl_bit_value(name: str) -> int:
    """Bunch-table bit of a pump-probe laser named as in ``PPL_BITS`` (e.g. ``LP_SPB``)."""
    import euxfel_bunch_pattern as bp

    try:
        return int(bp.PPL_BITS[name])
    except KeyError:
        raise ConfigError(f"pump-probe laser bit {name!r} is not one of "
                          f"{[b.name for b in bp.PPL_BITS]}") from None
