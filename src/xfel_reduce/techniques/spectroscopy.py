"""Spectroscopy (JUNGFRAU, XES): dark constants and correction of the JUNGFRAU module,
pass 1 (ROI image moments) → run curvature fit → pass 2 (per-frame spectra, on/off
partials) → run spectra.  Two passes by nature (the curvature needs the whole run);
they run in ``workflow/rules/spectroscopy.smk``.

Science: :mod:`xfel_reduce.spectroscopy`; report: ``reports/spectroscopy.ipynb``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


from . import Technique, log, register
from ..io.atomic import write_json
from ..io.provenance import provenance


@register
class Spectroscopy(Technique):
    name = "spectroscopy"
    detector = "jungfrau"
    notebook = "spectroscopy"
    sequence_files = {"frames": "r{run}/spectroscopy/REDU-R{run}-SPEC-S{seq}.h5",
                      "partial": "r{run}/spectroscopy/partials/S{seq}.h5"}
    run_files = {"spectra": "r{run}/spectroscopy/spectra.h5", "summary": "r{run}/spectroscopy/spectra_summary.json"}
    product_files = {"spectra_frames": ["frames"], "spectra": ["spectra", "summary"]}
    binned_files = {"binned": "r{run}/spectroscopy/spectra_binned.h5"}

    @classmethod
    def report_inputs(cls, results, run, seqs) -> dict:
        return {"spectra_file": cls.run_paths(results, run)["spectra"]}

    def binned(self, config, run, binning_file, inputs, output, provenance) -> dict:
        """Spectra on, off, all, on − off per bin, line shift per bin (and its kinetics)."""
        from ..spectroscopy import binned_run

        return binned_run(inputs["frames"], binning_file, _spec_cfg(config), output, provenance)

    def frame_table(self, paths):
        """The run's per-frame table (trainId, xray, ppl, pulse_energy, …) from the partials."""
        from ..spectroscopy import merge_partials

        table, _ = merge_partials(paths)
        return table


# -- Spectroscopy (JUNGFRAU) ---------------------------------------------------------------
def _spec_cfg(config: dict):
    from ..spectroscopy import SpectroscopyConfig

    return SpectroscopyConfig.from_dict(config.get("spectroscopy", {}))


def jungfrau_dark(config: dict, dark_dirs: Sequence[Path], output: Path, inputs: Sequence[Path] = ()) -> None:
    """Dark constants of the JUNGFRAU module (one dark run per gain stage)."""
    from ..calibrate import jungfrau as jf
    from ..calibrate.dark import BadPixelRules

    jcfg = config["calibration"]["jungfrau"]
    module = _spec_cfg(config).module
    n_cells = int(jcfg.get("memory_cells", 16))
    dark = jf.characterise_jungfrau({g: Path(d) for g, d in enumerate(dark_dirs)}, module, n_cells,
                                    BadPixelRules.from_dict(config["calibration"].get("badpixels")))
    gain = jf.read_gain_constants(Path(jcfg["gain_constants"]), module, n_cells)
    prov = provenance(config, list(inputs) + [jcfg["gain_constants"]], step="jungfrau_dark", module=module)
    jf.write_constants(Path(output), module, dark, gain, prov)


def jungfrau_correct(config: dict, raw: Path, constants: Path, output: Path) -> dict:
    from ..calibrate import jungfrau as jf

    module = _spec_cfg(config).module
    prov = provenance(config, [raw, constants], step="jungfrau_correct", module=module)
    return jf.correct_sequence(Path(raw), Path(output), module, jf.load_constants(Path(constants)), prov,
                               progress=log)


def spectroscopy_image(config: dict, run: int, frames: Path, train: Sequence[Path], output: Path,
                       constants: Path | None = None) -> None:
    """Pass 1: the sequence's ROI image moments (for the curvature fit). ``frames``: the
    CORR file, or with ``constants`` the RAW file (corrected in memory)."""
    from .. import spectroscopy

    inputs = [frames, *([constants] if constants else []), *train]
    prov = provenance(config, inputs, step="spectroscopy_image", run=run)
    spectroscopy.image_sequence(Path(frames), list(map(Path, train)), _spec_cfg(config), Path(output), prov,
                                constants=Path(constants) if constants else None, sources_config=config)


def spectroscopy_curvature(config: dict, run: int, partials: Sequence[Path], output: Path) -> None:
    from .. import spectroscopy

    prov = provenance(config, list(partials), step="spectroscopy_curvature", run=run)
    curv = spectroscopy.curvature_run(partials, _spec_cfg(config), Path(output), prov)
    log.info("run %d: line curvature coefficients %s", run, curv.coefficients)


def spectroscopy_reduce(config: dict, run: int, seq: int, frames: Path, train: Sequence[Path], curvature: Path,
                        partial_out: Path, frames_out: Path, constants: Path | None = None) -> dict:
    """Pass 2: per-frame spectra (REDU) and mergeable on/off partials (input as for
    :func:`spectroscopy_image`)."""
    from .. import spectroscopy

    inputs = [frames, *([constants] if constants else []), *train, curvature]
    prov = provenance(config, inputs, step="spectroscopy_reduce", run=run, sequence=seq)
    return spectroscopy.reduce_sequence(
        Path(frames), list(map(Path, train)), _spec_cfg(config), spectroscopy.load_curvature(Path(curvature)),
        Path(partial_out), Path(frames_out), prov, constants=Path(constants) if constants else None,
        run=run, sequence=seq,
        proposal=int(config.get("simulate", {}).get("proposal", 0)), progress=log,
        sources_config=config)


def spectroscopy_run(config: dict, run: int, partials: Sequence[Path], curvature: Path, output: Path,
                     output_json: Path) -> dict:
    from .. import spectroscopy

    prov = provenance(config, list(partials) + [curvature], step="spectroscopy_run", run=run)
    res = spectroscopy.gather_run(partials, Path(curvature), _spec_cfg(config), Path(output), prov)
    write_json(output_json, res, default=float)
    return res

