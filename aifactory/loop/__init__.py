"""The closed loop (docs/loop.md): a model retrains on its new data, is evaluated on a held-out set,
and is promoted only when the promotion policy (policies/promotion.rego) says so.

    promotion   the evaluation report, the policy's input and its decision (promote or refuse, with
                reason codes), fail closed

The loop's settings come from the site spec's `loop` section through the plan (`SitePlan.loop`); that
the evaluation set is never trained on is checked on the dataset versions' manifests
(aifactory.data.holdout). Runs on the control host.
"""
