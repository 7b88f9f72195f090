"""Snakemake script: RAW -> CORR for one JUNGFRAU sequence."""
from xfel_reduce import steps
from xfel_reduce.techniques import spectroscopy

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
spectroscopy.jungfrau_correct(snakemake.config, snakemake.input.raw, snakemake.input.constants, snakemake.output[0])
