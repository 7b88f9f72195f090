"""AGIPD as European XFEL records it: the 1M and 500K detectors, their files and geometry.

Facts, with where they come from:

* **Sources.** One instrument source per module, ``<detector>/DET/<m>CH0:xtdf`` (raw)
  and ``<detector>/CORR/<m>CH0:output`` (corrected), modules numbered from 0:
  ``SPB_DET_AGIPD1M-1``, ``MID_DET_AGIPD1M-1`` (16 modules), ``HED_DET_AGIPD500K2G``
  (8 modules; ``extra_data.tests.make_examples.make_agipd500k_run``, named after
  p900203 r9023; extra-data's ``AGIPD500K`` component).
* **Files.** Each module has its own aggregator (``RAW-R0012-AGIPD03-S00000.h5``); the
  control device (``…/MDL/FPGA_COMP``) is in ``AGIPD1MCTRL00`` for the 1M and in
  ``AGIPD500K2G00`` for the 500K (same make_examples runs).
* **Control class.** The 1M's ``FPGA_COMP`` is an ``AgipdComposite`` with
  ``bunchStructure.firstPulse`` and the run value ``patternType``; the 500K's is an
  ``Agipd2Composite`` without ``firstPulse`` and with ``expType`` instead (extra-redu's
  lit-frame finder then takes the first pulse as 0, and so do we: :mod:`xfel_reduce.beam`).
* **Geometry.** extra-geom's ``AGIPD_1MGeometry`` (four quadrants, placed by their
  corner positions in mm) and ``AGIPD_500K2GGeometry`` (eight modules in two columns,
  placed by ``from_origin(origin)`` in pixel units).  For the 500K the default origin
  puts the beam in the middle of the detector, between modules 2–5.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..io.discovery import DETECTOR_FAMILIES, DetectorFamily

MODULE_SHAPE = (512, 128)
PIXEL_SIZE_M = 200e-6

#: Quadrant positions (mm) of the AGIPD 1M at SPB used when the config gives none.
DEFAULT_QUAD_POS_MM: tuple[tuple[float, float], ...] = (
    (-525.0, 625.0),
    (-550.0, -10.0),
    (520.0, -160.0),
    (542.5, 475.0),
)
#: ``AGIPD_500K2GGeometry.from_origin`` argument (pixels) that centres the beam on the
#: 500K (the detector spans 1067 × 601 pixels with its gaps).
DEFAULT_ORIGIN_500K_PX: tuple[float, float] = (534.0, 301.0)


@dataclass(frozen=True)
class AgipdDetector:
    """One AGIPD detector kind.

    Attributes
    ----------
    name
        ``AGIPD1M`` or ``AGIPD500K``: the ``geometry.detector`` config value and the
        family of :mod:`xfel_reduce.io.discovery` (whose name pattern and module count
        it uses).
    control_aggregator
        Aggregator of the control device's files.
    control_class
        ``classId`` of the control device.
    pattern_type_key
        The control's run value naming the pattern type (``XRay``, ``Dark``): the
        ``Agipd2Composite`` calls it ``expType`` (extra-redu's lit-frame finder reads it).
    first_pulse_key
        The control's first-pulse key; ``None`` where it records none (the 500K: 0).
    """

    name: str
    control_aggregator: str
    control_class: str
    pattern_type_key: str = "patternType"
    first_pulse_key: str | None = "bunchStructure.firstPulse"

    @property
    def family(self) -> DetectorFamily:
        return next(f for f in DETECTOR_FAMILIES if f.family == self.name)

    @property
    def n_modules(self) -> int:
        """Modules of the full detector."""
        return self.family.n_modules

    def matches(self, detector_name: str) -> bool:
        """Whether ``detector_name`` (the part of a source name before ``/DET/``) is this kind."""
        return re.fullmatch(self.family.name_pattern, detector_name) is not None

    def geometry(self, quad_positions: Sequence[Sequence[float]] | None = None,
                 origin_px: Sequence[float] | None = None, geom_file: str | Path | None = None):
        """The extra-geom geometry: from a CrystFEL ``.geom`` file, else from the quadrant
        positions (1M) or the origin (500K)."""
        from extra_geom import AGIPD_1MGeometry, AGIPD_500K2GGeometry

        cls = AGIPD_1MGeometry if self.name == "AGIPD1M" else AGIPD_500K2GGeometry
        if geom_file:
            path = Path(geom_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"geometry file {path} does not exist: set geometry.geom_file in the config to a "
                    f"CrystFEL .geom file of the {self.name}, or leave it empty")
            return cls.from_crystfel_geom(str(path))
        if self.name == "AGIPD1M":
            quads = quad_positions if quad_positions is not None else DEFAULT_QUAD_POS_MM
            return cls.from_quad_positions([tuple(q) for q in quads])
        origin = origin_px if origin_px is not None else DEFAULT_ORIGIN_500K_PX
        return cls.from_origin(origin=tuple(float(v) for v in origin))


AGIPD1M = AgipdDetector("AGIPD1M", "AGIPD1MCTRL00", "AgipdComposite")
AGIPD500K = AgipdDetector("AGIPD500K", "AGIPD500K2G00", "Agipd2Composite", "expType", first_pulse_key=None)
DETECTORS: dict[str, AgipdDetector] = {d.name: d for d in (AGIPD1M, AGIPD500K)}
#: The kinds by the ``classId`` of their control device.
CONTROL_CLASSES: dict[str, AgipdDetector] = {d.control_class: d for d in DETECTORS.values()}


def detector(name: str) -> AgipdDetector:
    """The AGIPD kind called ``name`` (``geometry.detector``), with a clear error."""
    try:
        return DETECTORS[str(name).upper()]
    except KeyError:
        from ..config import ConfigError

        raise ConfigError(f"geometry.detector: {name!r} is not one of {sorted(DETECTORS)}") from None


def configured(geometry_cfg: dict | None) -> AgipdDetector:
    """The kind the config's ``geometry`` section names (``detector``; default AGIPD 1M)."""
    return detector((geometry_cfg or {}).get("detector") or "AGIPD1M")


def geometry_from_crystfel(path: str | Path):
    """An AGIPD geometry from a CrystFEL ``.geom`` file, 1M or 500K by its panels
    (``p0`` … ``p15`` or ``p0`` … ``p7``, as extra-geom writes them)."""
    text = Path(path).read_text()
    panels = {int(m) for m in re.findall(r"^p(\d+)a\d+/", text, re.MULTILINE)}
    kind = next((d for d in DETECTORS.values() if len(panels) == d.n_modules), None)
    if kind is None:
        raise ValueError(f"{path}: {len(panels)} AGIPD panels; an AGIPD 1M has 16, a 500K 8")
    return kind.geometry(geom_file=path)


def kind_of_name(detector_name: str) -> AgipdDetector | None:
    """The AGIPD kind of a detector name (``HED_DET_AGIPD500K2G`` → AGIPD 500K), or None."""
    return next((d for d in DETECTORS.values() if d.matches(detector_name)), None)


def detector_of_name(detector_name: str) -> AgipdDetector:
    """:func:`kind_of_name` for a name that must be an AGIPD's."""
    kind = kind_of_name(detector_name)
    if kind is None:
        raise ValueError(f"{detector_name!r} is not the name of an AGIPD 1M or 500K")
    return kind


def check_modules(det: AgipdDetector, modules: Sequence[int], where: str = "modules") -> None:
    """Module numbers must exist on the detector (0 … n_modules − 1)."""
    bad = [int(m) for m in modules if not 0 <= int(m) < det.n_modules]
    if bad:
        from ..config import ConfigError

        raise ConfigError(f"{where}: modules {bad} do not exist on the {det.name} "
                          f"(modules 0–{det.n_modules - 1})")


def check_geometry_detector(geometry_cfg: dict | None, source_names: Sequence[str], where: str = "?") -> AgipdDetector:
    """The configured ``geometry.detector`` must be the AGIPD the run's module sources
    name: a 500K's modules placed with the 1M's geometry would give wrong q silently.

    Returns the detector kind; a source name of neither kind is left to the readers.
    """
    kind = configured(geometry_cfg)
    for name in source_names:
        head = str(name).split("/", 1)[0]
        found = kind_of_name(head)
        if found is not None and found is not kind:
            from ..config import ConfigError

            raise ConfigError(
                f"{where}: the run's detector is {head} (an {found.name}) but geometry.detector is "
                f"{kind.name}{'' if (geometry_cfg or {}).get('detector') else ' (the default)'}: "
                f"set geometry.detector: {found.name} in the config")
    return kind
