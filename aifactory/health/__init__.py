"""The health gate (docs/health.md): every host proves it is healthy before it takes work.

    thresholds  the threshold table (policies/data/health_thresholds.json) and each host's rows
    tasks       what each host checks, from the plan and the Connection
    remote      running the node-side checks on a host over the Connection (ssh from the control host)
    run         one health run: every host in parallel, the pool's all-reduce, the policy's verdicts
    evidence    the run as one JSON, signed (SSHSIG) in the site's state folder
    slurm       verdicts applied to Slurm: drain, and resume only what aifactory drained

Runs on the control host; the checks themselves are node code (aifactory.runtime.health).
"""
