"""Train-level data of a whole run, by train ID, and which sources they come from.

The facility writes timeserver, XGM, detector control and motors into aggregators of
their own (``DA01``, ``DA02``, ``AGIPD1MCTRL00``, ``JNGFRCTRL00`` …), each with its own
sequence numbering: sequence *k* of one has nothing to do with sequence *k* of another
(extra-data's documentation). So the data a detector sequence needs are looked up by
train ID in every non-detector file of the run — never by pairing file names.

:func:`resolve_sources` decides, per kind of source, which one to use: the config's
``sources`` block if it names one (checked against the run), else the instrument
profile's name if the run has it, else discovery in the run's own source list
(:mod:`xfel_reduce.io.discovery`); what decided is recorded for provenance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import InstrumentProfile, instrument_profile, ppl_bit_value
from ..beam import on_line
from . import discovery, sources
from .runs import InputDataError

_FILE_RE = re.compile(r"^RAW-R\d{4}-(?P<agg>\w+?)-S\d{5}\.h5$")
_DETECTOR_AGG = re.compile(sources.DETECTOR_AGGREGATOR_RE)


def train_files(raw_dir: str | Path) -> list[Path]:
    """The run's files that hold train-level data (every aggregator but detector modules)."""
    out = []
    for p in sorted(Path(raw_dir).glob("RAW-R*-S*.h5")):
        m = _FILE_RE.match(p.name)
        if m and not _DETECTOR_AGG.match(m.group("agg")):
            out.append(p)
    return out


def open_train_data(raw_dir: str | Path, files: Sequence[str | Path] | None = None):
    """An ``extra_data.DataCollection`` over the run's train-level files.

    Raises
    ------
    InputDataError
        The folder has no such file (wrong path, or the DA aggregators are missing).
    """
    import extra_data

    # an empty list given is "no train-level files", never "look in raw_dir" (nor in cwd)
    paths = [Path(p) for p in files] if files is not None else train_files(raw_dir)
    if not paths:
        raise InputDataError(
            f"{raw_dir}: no train-level files (RAW-…-DA01-…, …CTRL00-…): the run's slow and "
            "beam data are missing. Check `proposal_dir` and the run number, or declare "
            "the X-ray frames with `annotation.xray_frames`.")
    for p in paths:
        if not p.is_file():
            raise InputDataError(f"missing input file {p}")
    # one run: RUN values (device settings) are only read from a single-run collection
    return extra_data.DataCollection.from_paths([str(p) for p in paths], parallelize=False,
                                                is_single_run=True)


@dataclass
class RunSources:
    """The sources a run's reduction reads, and how each was chosen.

    ``None`` means the run has none of that kind; the caller decides whether that is an
    error (it is for X-ray flags unless the user declares the X-ray frames).
    """

    instrument: InstrumentProfile
    sase: int
    ppl_bit: int
    timeserver: str | None
    pulse_pattern_decoder: str | None
    xgm: str | None
    agipd_control: str | None
    lit_frame_finder: str | None
    decided: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"instrument": self.instrument.name, "sase": self.sase, "ppl_bit": self.ppl_bit,
                "timeserver": self.timeserver, "pulse_pattern_decoder": self.pulse_pattern_decoder,
                "xgm": self.xgm, "agipd_control": self.agipd_control,
                "lit_frame_finder": self.lit_frame_finder, "decided": dict(self.decided)}


def _choose(dc, kind: str, configured: str | None, preferred: str, finder, key: str,
            where: str, decided: dict[str, str], name: str) -> str | None:
    if configured:
        decided[name] = "config"
        return discovery.resolve(dc, kind, configured, finder(dc), key, where=where)
    if preferred and (preferred in dc.all_sources):
        decided[name] = "instrument profile"
        return preferred
    candidates = finder(dc)
    if not candidates:
        decided[name] = "absent"
        return None
    chosen = discovery.pick(kind, candidates, key, where=where)
    decided[name] = f"discovered ({getattr(chosen, 'reason', '')})"
    # an XGM candidate names its device; its fast data are the ``:output`` channel
    return getattr(chosen, "output", None) or getattr(chosen, "source", chosen)


def resolve_sources(config: dict, dc, where: str = "the run") -> RunSources:
    """Decide the run's timeserver, decoder, XGM, AGIPD control and lit-frame finder.

    Parameters
    ----------
    config
        Workflow config: ``instrument`` (optional; guessed from the run when absent)
        and ``sources`` (optional overrides, key by key).
    dc
        The run's train-level data (:func:`open_train_data`).
    where
        The run, for messages (e.g. its folder).
    """
    cfg = config.get("sources", {}) or {}
    decided: dict[str, str] = {}
    name = config.get("instrument")
    if name:
        decided["instrument"] = "config"
    else:
        name, how = discovery.explain_instrument(dc)
        if not name:
            raise InputDataError(f"cannot tell the instrument of {where} ({how}): set `instrument` "
                                 f"in the config to one of SPB, MID, FXE, HED, SCS, SQS")
        decided["instrument"] = f"guessed {how}"
    prof = instrument_profile(name)
    xgm_out = cfg.get("xgm")
    if xgm_out and ":" not in xgm_out:
        xgm_out += ":output"
    sase = int(cfg.get("sase", prof.sase))
    out = RunSources(
        instrument=prof,
        sase=sase,
        ppl_bit=ppl_bit_value(cfg.get("ppl_bit", prof.ppl_bit)),
        timeserver=_choose(dc, "timeserver", cfg.get("timeserver"), prof.timeserver,
                           lambda r: discovery.find_timeservers(r, prof.name), "sources.timeserver",
                           where, decided, "timeserver"),
        pulse_pattern_decoder=_choose(dc, "pulse-pattern decoder", cfg.get("pulse_pattern_decoder"),
                                      prof.pulse_pattern_decoder,
                                      lambda r: discovery.find_pulse_pattern_decoders(r, prof.name),
                                      "sources.pulse_pattern_decoder", where, decided,
                                      "pulse_pattern_decoder"),
        # only XGMs on the instrument's electron line measure its pulses
        xgm=_choose(dc, "XGM", xgm_out, prof.xgm_output,
                    lambda r: [c for c in discovery.find_xgms(r, prof.name)
                               if c.output and on_line(c.source, sase)],
                    "sources.xgm", where, decided, "xgm"),
        agipd_control=_agipd_control(dc, cfg.get("detector_control"), prof, decided, where),
        lit_frame_finder=cfg.get("lit_frame_finder") or next(
            (c.source for c in discovery.find_lit_frame_finders(dc)), None),
        decided=decided,
    )
    decided.setdefault("sase", "config" if "sase" in cfg else "instrument profile")
    return out


def _agipd_control(dc, configured: str | None, prof: InstrumentProfile, decided: dict[str, str],
                   where: str) -> str | None:
    if configured:
        if configured not in dc.control_sources:
            raise InputDataError(f"`sources.detector_control: {configured}` is not a control source "
                                 f"of {where}: correct it or remove it to discover")
        decided["agipd_control"] = "config"
        return configured
    if prof.agipd_control and prof.agipd_control in dc.control_sources:
        decided["agipd_control"] = "instrument profile"
        return prof.agipd_control
    found = [s for s in dc.control_sources if s.endswith("/MDL/FPGA_COMP")]
    if not found:
        decided["agipd_control"] = "absent"
        return None
    chosen = discovery.pick("detector control", sorted(found), "sources.detector_control", where=where)
    decided["agipd_control"] = "discovered (…/MDL/FPGA_COMP)"
    return str(chosen)
