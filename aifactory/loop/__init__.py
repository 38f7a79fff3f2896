"""The closed loop (docs/loop.md): a model retrains on its new data, is evaluated on a held-out set,
and is promoted only when the promotion policy (policies/promotion.rego) says so.

    promotion   the evaluation report, the policy's input and its decision (promote or refuse, with
                reason codes), fail closed
    manifest    the training manifest: the files a training job read, checked against their signed
                dataset version and signed by the site; the evaluation set kept out of it
    signoff     a person's SSHSIG sign-off of one challenger, the signer named by the site's trust file
    jobs        the seam to the cluster: training and evaluation jobs through Slurm
    turn        one turn, step by step (version, train, register, evaluate, decide, promote), resumable
    lineage     from a decision back to the model, its training manifest and its data, each link verified

The loop's settings come from the site spec's `loop` section through the plan (`SitePlan.loop`); that
the evaluation set is never trained on is checked on the dataset versions' manifests
(aifactory.data.holdout). Runs on the control host; the evaluation job itself is
aifactory.runtime.evaluate, on a node.
"""
