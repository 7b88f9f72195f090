"""SPI: hits are the annotation's (the SPI hit finder of :mod:`xfel_reduce.spi` on the
one pass's photons and lit pixels, thresholds per run); the kept-frames set
(:mod:`xfel_reduce.kept`, ``workflow/rules/kept.smk``) is its reduced data, with the
facility's REDU file.  No per-sequence reduction of its own; its report is the
annotation report's hit-finding section.
"""
from __future__ import annotations

from . import Technique, register


@register
class Spi(Technique):
    name = "spi"
    hit_finding = True
    annotation_hits = True
    truth_per_frame = True
