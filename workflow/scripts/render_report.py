"""Snakemake glue of rule ``report``: execute one stage notebook of one run to HTML."""
import shutil
from pathlib import Path

from xfel_reduce.report import ReportExecutionError, render_report

smk = snakemake  # noqa: F821 - injected by Snakemake


def as_param(value):
    """Snakemake gives str for a single file and a Namedlist for a list of files."""
    return str(value) if isinstance(value, str) else [str(v) for v in value]


parameters = {k: as_param(v) for k, v in smk.input.items() if k != "template"}
parameters.update(smk.params.parameters)
parameters["verdict_path"] = str(smk.output.verdict)
html = Path(smk.output.html)
try:
    render_report(smk.input.template, html, parameters, kernel=smk.params.kernel,
                  log=smk.log[0], title=f"{smk.wildcards.stage} r{smk.wildcards.run}",
                  figure=smk.output.figure)
except ReportExecutionError as exc:
    # Snakemake deletes the outputs of a failed job; keep the page showing the
    # traceback under a name that is not an output, and point the log at it.
    with open(smk.log[0], "a") as fh:
        fh.write(f"ERROR: {exc}\n")
        if html.is_file():
            kept = html.with_name(html.stem + ".failed.html")
            shutil.copyfile(html, kept)
            fh.write(f"the page showing the error is kept as {kept}\n")
    raise SystemExit(f"{exc}\n(see {smk.log[0]})") from exc
