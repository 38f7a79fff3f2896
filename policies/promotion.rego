# METADATA
# scope: package
# title: Promotion of a challenger
# description: >-
#   Decides whether a model's challenger may replace its champion: promote, or refuse with one reason
#   code per failed rule. The input is the model's loop settings from the plan (evaluation set, metric
#   rules, sign-off), the evaluation report (both models' metrics on the evaluation set and the set's
#   identity), the dataset versions the challenger was trained on, the evaluation files found in them,
#   and the sign-off when one was given. Anything missing refuses: a metric not reported, training data
#   not named, a sign-off not verified.
# custom:
#   controls: [CM-3, CM-3(2), CM-4]
#   severity: high
#   remediation: Fix what each reason names (retrain, evaluate on the loop's set, sign off) and decide again; the champion keeps serving meanwhile.
package aifactory.promotion

import rego.v1

_loop := input.loop

_report := input.report

_evaluation := input.loop.evaluation

# Each model's metrics ({} for a model not reported: every metric of it is then missing).
_champion := _report.champion.metrics if is_object(_report.champion) else := {}

_challenger := _report.challenger.metrics if is_object(_report.challenger) else := {}

# A metric with both improvement minima must improve; any other metric is guarded by its tolerance.
_is_target(metric) if object.get(metric, "min_improvement", null) != null

_targets contains metric if {
	some metric in _loop.metrics
	_is_target(metric)
}

_guards contains metric if {
	some metric in _loop.metrics
	not _is_target(metric)
}

_measured(name) if {
	is_number(_champion[name])
	is_number(_challenger[name])
}

# How much better the challenger is (negative: worse), whichever way the metric is better.
_change(metric) := _challenger[metric.name] - _champion[metric.name] if metric.better == "higher"

_change(metric) := _champion[metric.name] - _challenger[metric.name] if metric.better == "lower"

# Binary floating point: 0.58 - 0.57 is 0.00999...98. A change within a billionth of the values'
# size of a bound counts as meeting it.
_slack(metric) := 1e-9 * max([1, abs(_champion[metric.name]), abs(_challenger[metric.name])])

# Only a target has minima: a guard's are null (as the plan carries them), and arithmetic on null is
# an error in the engine, not undefined, so a guard that got better must never reach the sums below.
_improved(metric) if {
	_is_target(metric)
	change := _change(metric)
	change > 0
	change >= metric.min_improvement - _slack(metric)
	change >= (metric.min_relative_improvement * abs(_champion[metric.name])) - _slack(metric)
}

_tolerance(metric) := metric.tolerance if is_number(metric.tolerance) else := 0

_within_tolerance(metric) if _change(metric) >= (0 - _tolerance(metric)) - _slack(metric)

# METADATA
# title: Report of another model
# description: The evaluation report is about the model whose loop decides.
# custom:
#   controls: [CM-3(2), SI-7]
#   severity: high
#   remediation: Evaluate this model's challenger and decide on that report.
reasons contains "model-mismatch" if not _report.model == _loop.model

# METADATA
# title: Evaluation set mismatch
# description: >-
#   Both models were measured on the loop's evaluation set (its dataset, version and, when the spec
#   pins it, digest), and the files checked against the training data are that same version.
# custom:
#   controls: [CM-3(2), SA-11]
#   severity: high
#   remediation: Run the evaluation on the dataset version the spec's loop names.
reasons contains "eval-set-mismatch" if not _evaluation_set_matches

_evaluation_set_matches if {
	measured := _report.evaluation_set
	measured.dataset == _evaluation.dataset
	measured.version == _evaluation.version
	_pinned_digest_matches(measured.digest)
	checked := input.evaluation_files
	checked.dataset == measured.dataset
	checked.version == measured.version
	checked.digest == measured.digest
}

_pinned_digest_matches(_) if _evaluation.digest == null

_pinned_digest_matches(digest) if digest == _evaluation.digest

# METADATA
# title: Training data unknown
# description: >-
#   The report names the dataset versions the challenger was trained on and the result of checking
#   them against the evaluation set's files; without them nothing shows the set was held out.
# custom:
#   controls: [CM-3(2), SA-11]
#   severity: high
#   remediation: Decide with the challenger's training manifest (its dataset versions) and the overlap check.
reasons contains "training-unknown" if not _training_known

_training_known if {
	is_array(input.training)
	count(input.training) > 0
	is_array(input.overlap)
}

# METADATA
# title: Evaluation set in training
# description: >-
#   The challenger was not trained on the evaluation set: no dataset version it learned from is of
#   the evaluation dataset, and no file of it has an evaluation file's path or content.
# custom:
#   controls: [SA-11, CM-3(2)]
#   severity: critical
#   remediation: Retrain without the evaluation set's files; a score on data the model saw says nothing.
reasons contains "eval-set-in-training" if _evaluation_set_trained_on

_evaluation_set_trained_on if {
	some version in input.training
	version.dataset == _evaluation.dataset
}

_evaluation_set_trained_on if count(input.overlap) > 0

# METADATA
# title: No champion
# description: The report has the champion's metrics; the loop only promotes a challenger that beats one.
# custom:
#   controls: [CM-3]
#   severity: medium
#   remediation: Promote the first champion by hand (or by aifactory up's train stage), then let the loop run.
reasons contains "no-champion" if not is_object(_report.champion)

# METADATA
# title: Metric missing
# description: Every metric of the loop has a number for both the champion and the challenger.
# custom:
#   controls: [CM-3(2)]
#   severity: high
#   remediation: Make the evaluation job report every metric the spec's loop lists.
reasons contains "metric-missing" if {
	is_object(_report.champion)
	some metric in _loop.metrics
	not _measured(metric.name)
}

# METADATA
# title: No improvement
# description: >-
#   Every target metric improves on the champion's by at least its absolute and its relative minimum
#   (and by more than nothing); a loop without a target promotes nothing.
# custom:
#   controls: [CM-3(2), CM-4]
#   severity: medium
#   remediation: Keep the champion; retrain on more or better data, or revisit the minima in the spec.
reasons contains "no-improvement" if _not_improved

_not_improved if count(_targets) == 0

_not_improved if {
	some metric in _targets
	_measured(metric.name)
	not _improved(metric)
}

# METADATA
# title: Metric regressed
# description: No other metric is worse than the champion's by more than its tolerance (0 unless the spec sets one).
# custom:
#   controls: [CM-4, CM-3(2)]
#   severity: high
#   remediation: Keep the champion; find why the challenger got worse on that metric.
reasons contains "metric-regressed" if {
	some metric in _guards
	_measured(metric.name)
	not _within_tolerance(metric)
}

# A loop without sign_off promotes without one; a sign_off left out of the input (not even null) is
# required.
_sign_off_required if not _loop.sign_off == null

_sign_off_given if is_object(input.sign_off)

# METADATA
# title: Sign-off missing
# description: When the loop requires a person's sign-off (human oversight, EU AI Act Art. 14), one was given.
# custom:
#   controls: [CM-3]
#   severity: high
#   remediation: Ask one of the people the spec's sign_off names to sign off this challenger.
reasons contains "sign-off-missing" if {
	_sign_off_required
	not _sign_off_given
}

# METADATA
# title: Sign-off not verified
# description: The sign-off's signature verified against the signer's key.
# custom:
#   controls: [CM-3, AU-10]
#   severity: high
#   remediation: Have the signer sign again with their registered key.
reasons contains "sign-off-unverified" if {
	_sign_off_required
	_sign_off_given
	not input.sign_off.verified == true
}

# METADATA
# title: Sign-off by someone not allowed
# description: The sign-off is by one of the people the spec's sign_off names.
# custom:
#   controls: [CM-3, CM-5]
#   severity: high
#   remediation: Ask one of the named people to sign off, or change the spec's sign_off through its own review.
reasons contains "sign-off-not-allowed" if {
	_sign_off_required
	_sign_off_given
	not _signer_allowed
}

_signer_allowed if input.sign_off.by in _loop.sign_off.by

# METADATA
# title: Sign-off of another challenger
# description: The sign-off names the challenger being decided (its version digest), not another one.
# custom:
#   controls: [CM-3, AU-10]
#   severity: high
#   remediation: Sign off the challenger this report is about.
reasons contains "sign-off-mismatch" if {
	_sign_off_required
	_sign_off_given
	not input.sign_off.challenger == _report.challenger.digest
}

# Per metric, for the promotion record: both values, the change (positive: better), the change as a
# share of the champion's value, and what the rule made of it.
_verdict(metric) := "missing" if {
	not _measured(metric.name)
} else := "improved" if {
	_improved(metric)
} else := "not-improved" if {
	_is_target(metric)
} else := "within-tolerance" if {
	_within_tolerance(metric)
} else := "regressed"

_value(metrics, name) := metrics[name] if is_number(metrics[name]) else := null

_change_or_null(metric) := _change(metric) if _measured(metric.name) else := null

_relative(metric) := _change(metric) / abs(_champion[metric.name]) if {
	_measured(metric.name)
	_champion[metric.name] != 0
} else := null

comparisons := [comparison |
	some metric in _loop.metrics
	comparison := {
		"metric": metric.name,
		"role": _role(metric),
		"champion": _value(_champion, metric.name),
		"challenger": _value(_challenger, metric.name),
		"change": _change_or_null(metric),
		"relative_change": _relative(metric),
		"verdict": _verdict(metric),
	}
]

_role(metric) := "target" if _is_target(metric) else := "guard"

decision := {"promote": count(reasons) == 0, "reasons": sort(reasons), "metrics": comparisons}
