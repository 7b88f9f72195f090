# The embedded synthetic beamtime: one rule per simulated run, because each run's
# file list is known only from the config (rules are generated in a loop).
from xfel_reduce.simulate.beamtime import truth_dir_for

SIMULATED_FILES = []

if SIM:
    rule simulate_detector:
        output:
            gain=os.path.join(PROPOSAL, "calib", "agipd_gain_constants.h5"),
            truth=os.path.join(PROPOSAL, "truth", "detector.h5"),
            jf=[os.path.join(PROPOSAL, "calib", "jungfrau_gain_constants.h5"),
                os.path.join(PROPOSAL, "truth", "jungfrau_detector.h5")]
               if any(r.get("type") in JUNGFRAU_RUN_TYPES for r in SIM_RUNS.values()) else [],
        log: os.path.join(RESULTS, "logs", "simulate_detector.log"),
        benchmark: os.path.join(RESULTS, "benchmarks", "simulate_detector.tsv")
        resources: mem_mb=scaled(4000), runtime=scaled(10)
        priority: PRIORITY_SPINE
        conda: CONDA_ENV
        script: "../scripts/simulate_detector.py"

    for _run, _rcfg in SIM_RUNS.items():
        rule:
            name: f"simulate_r{_run:04d}"
            output:
                [str(p) for p in (expected_jungfrau_files if _rcfg.get("type") in JUNGFRAU_RUN_TYPES
                                  else expected_files)(PROPOSAL, SIM, _rcfg)],
                truth=str(truth_dir_for(PROPOSAL, _run) / "truth.json"),
                frames=str(truth_dir_for(PROPOSAL, _run) / "truth.h5"),
            params: run=_run
            log: os.path.join(RESULTS, "logs", f"simulate_r{_run:04d}.log")
            benchmark: os.path.join(RESULTS, "benchmarks", f"simulate_r{_run:04d}.tsv")
            resources: mem_mb=scaled(6000), runtime=scaled(60)
            priority: PRIORITY_SPINE
            conda: CONDA_ENV
            script: "../scripts/simulate_run.py"
        SIMULATED_FILES += list(getattr(rules, f"simulate_r{_run:04d}").output)

    rule simulate_all:
        """The whole synthetic beamtime (target of `xfel-reduce simulate`)."""
        input: rules.simulate_detector.output, SIMULATED_FILES
