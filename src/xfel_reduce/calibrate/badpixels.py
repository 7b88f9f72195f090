"""EuXFEL bad-pixel bits, exactly as the facility defines them, and xfel-reduce's own.

The facility's definition, from its calibration pipeline, is published to users as
``extra.calibration.BadPixels`` in EXtra (``euxfel-extra``, ``extra/calibration/__init__.py``;
documented at https://extra.readthedocs.io/en/latest/calibration/, the page
extra-data's ``JUNGFRAU.masked_data`` points to for the meaning of ``data.mask`` /
``image.mask`` bits): bits 0–23 name reasons set by the facility's constants and
corrections (bit 23 is ``EXPERT_CHOICE``), and
bits 30–31 (``USER1``, ``USER2``) are left to users.  Member names and values below
are the facility's, spelling included (``CI_GAIN_OF_OF_THRESHOLD``);
``tests/test_jungfrau_layout.py`` compares them with EXtra's enum.

xfel-reduce's own flags live only in the user bits, so a mask read from a facility
CORR file (``image.mask``) keeps the facility's meaning bit for bit:

* ``USER_MASK`` = ``USER1`` (bit 30): pixels excluded by the user's mask;
* ``MODULE_MISSING`` = ``USER2`` (bit 31): the module recorded no data for the frame.
"""
from __future__ import annotations

from enum import IntFlag


class BadPixels(IntFlag):
    """Bit flags of ``image.mask`` / ``data.mask``; 0 means good."""

    # -- the facility's bits (names and values as in extra.calibration.BadPixels) --
    OFFSET_OUT_OF_THRESHOLD = 1 << 0
    NOISE_OUT_OF_THRESHOLD = 1 << 1
    OFFSET_NOISE_EVAL_ERROR = 1 << 2
    NO_DARK_DATA = 1 << 3
    CI_GAIN_OF_OF_THRESHOLD = 1 << 4
    CI_LINEAR_DEVIATION = 1 << 5
    CI_EVAL_ERROR = 1 << 6
    FF_GAIN_EVAL_ERROR = 1 << 7
    FF_GAIN_DEVIATION = 1 << 8
    FF_NO_ENTRIES = 1 << 9
    CI2_EVAL_ERROR = 1 << 10
    VALUE_IS_NAN = 1 << 11
    VALUE_OUT_OF_RANGE = 1 << 12
    GAIN_THRESHOLDING_ERROR = 1 << 13
    DATA_STD_IS_ZERO = 1 << 14
    ASIC_STD_BELOW_NOISE = 1 << 15
    INTERPOLATED = 1 << 16
    NOISY_ADC = 1 << 17
    OVERSCAN = 1 << 18
    NON_SENSITIVE = 1 << 19
    NON_LIN_RESPONSE_REGION = 1 << 20
    WRONG_GAIN_VALUE = 1 << 21
    NON_STANDARD_SIZE = 1 << 22
    EXPERT_CHOICE = 1 << 23
    USER1 = 1 << 30
    USER2 = 1 << 31
    # -- xfel-reduce's flags: aliases of the user bits, never of a facility reason --
    USER_MASK = USER1
    MODULE_MISSING = USER2


#: The facility's reason bits (0–23); a project flag must never be one of them.
FACILITY_BITS = 0xFFFFFF
#: Bits the facility leaves to users (30, 31): the only ones xfel-reduce sets for itself.
USER_BITS = int(BadPixels.USER1 | BadPixels.USER2)
#: xfel-reduce's flags and what they mean.
PROJECT_FLAGS = {"USER_MASK": BadPixels.USER_MASK, "MODULE_MISSING": BadPixels.MODULE_MISSING}

_PROJECT_NAME = {int(v): k for k, v in PROJECT_FLAGS.items()}


def describe(mask_value: int) -> list[str]:
    """Names of the bits set in a mask value (user bits by their xfel-reduce meaning)."""
    return [_PROJECT_NAME.get(int(b), b.name) for b in BadPixels if int(mask_value) & int(b)]
