package aifactory.promotion_test

import rego.v1

import data.aifactory.promotion

# A challenger that beats the champion on the target (accuracy: +0.05, above 0.01 and 2% of 0.80)
# and is worse on the guard within its tolerance (log-loss: +0.02 of 0.05): it is promoted. Each test
# changes one thing of it.
_evaluation_set := {"dataset": "holdout", "version": 3, "digest": "sha256:eeee"}

_accuracy := {"name": "accuracy", "better": "higher", "min_improvement": 0.01, "min_relative_improvement": 0.02, "tolerance": null}

_log_loss := {"name": "log-loss", "better": "lower", "min_improvement": null, "min_relative_improvement": null, "tolerance": 0.05}

_loop := {
	"model": "triage",
	"trigger": {"new_samples": 100, "schedule": null, "on_calendar": null},
	"evaluation": {"dataset": "holdout", "version": 3, "digest": null},
	"metrics": [_accuracy, _log_loss],
	"sign_off": null,
	"canary": null,
}

_report := {
	"format": "aifactory.evaluation-report/v1",
	"model": "triage",
	"evaluation_set": _evaluation_set,
	"champion": {"digest": "sha256:aaaa", "metrics": {"accuracy": 0.80, "log-loss": 0.50}},
	"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.85, "log-loss": 0.52}},
}

_input := {
	"loop": _loop,
	"report": _report,
	"evaluation_files": _evaluation_set,
	"training": [{"dataset": "records", "version": 4, "digest": "sha256:cccc"}],
	"overlap": [],
	"sign_off": null,
}

_decide(doc) := d if {
	d := promotion.decision with input as doc
}

# An object with one key's value replaced whole (object.union alone merges nested objects).
_set(doc, key, value) := object.union(object.remove(doc, [key]), {key: value})

# The input with one top-level key replaced, or a key of the report, the loop, or a model's metrics.
_with(key, value) := _set(_input, key, value)

_with_report(key, value) := _with("report", _set(_report, key, value))

_with_loop(key, value) := _with("loop", _set(_loop, key, value))

_with_challenger(metrics) := _with_report("challenger", {"digest": "sha256:bbbb", "metrics": metrics})

_refused(doc, reasons) if {
	d := _decide(doc)
	d.promote == false
	d.reasons == reasons
}

_promoted(doc) if {
	d := _decide(doc)
	d.promote == true
	d.reasons == []
}

test_a_better_challenger_is_promoted if {
	d := _decide(_input)
	d.promote == true
	d.reasons == []
	[target, guard] := d.metrics
	object.remove(target, ["change", "relative_change"]) == {"metric": "accuracy", "role": "target", "champion": 0.80, "challenger": 0.85, "verdict": "improved"}
	abs(target.change - 0.05) < 1e-12
	abs(target.relative_change - 0.0625) < 1e-12
	object.remove(guard, ["change", "relative_change"]) == {"metric": "log-loss", "role": "guard", "champion": 0.50, "challenger": 0.52, "verdict": "within-tolerance"}
	abs(guard.change + 0.02) < 1e-12
}

test_an_empty_input_is_refused_for_every_reason_it_can_name if {
	_refused({}, ["eval-set-mismatch", "model-mismatch", "no-champion", "no-improvement", "sign-off-missing", "training-unknown"])
}

# model-mismatch

test_a_report_of_another_model_is_refused if {
	_refused(_with_report("model", "other"), ["model-mismatch"])
}

test_a_report_naming_no_model_is_refused if {
	_refused(_with("report", object.remove(_report, ["model"])), ["model-mismatch"])
}

# eval-set-mismatch

test_another_version_of_the_set_is_refused if {
	other := object.union(_evaluation_set, {"version": 2})
	_refused(object.union(_with_report("evaluation_set", other), {"evaluation_files": other}), ["eval-set-mismatch"])
}

test_another_dataset_is_refused if {
	other := object.union(_evaluation_set, {"dataset": "records"})
	_refused(object.union(_with_report("evaluation_set", other), {"evaluation_files": other}), ["eval-set-mismatch"])
}

test_files_checked_of_another_version_are_refused if {
	_refused(_with("evaluation_files", object.union(_evaluation_set, {"digest": "sha256:ffff"})), ["eval-set-mismatch"])
}

test_a_pinned_digest_must_be_the_measured_one if {
	pinned := object.union(_loop.evaluation, {"digest": "sha256:dddd"})
	_refused(_with_loop("evaluation", pinned), ["eval-set-mismatch"])
	_promoted(_with_loop("evaluation", object.union(_loop.evaluation, {"digest": "sha256:eeee"})))
}

test_a_report_without_its_set_is_refused if {
	_refused(_with("report", object.remove(_report, ["evaluation_set"])), ["eval-set-mismatch"])
}

# training-unknown

test_no_training_versions_is_refused if {
	_refused(_with("training", []), ["training-unknown"])
}

test_no_overlap_check_is_refused if {
	_refused(object.remove(_input, ["overlap"]), ["training-unknown"])
}

# eval-set-in-training

test_training_on_a_version_of_the_evaluation_dataset_is_refused if {
	training := array.concat(_input.training, [{"dataset": "holdout", "version": 2, "digest": "sha256:9999"}])
	_refused(_with("training", training), ["eval-set-in-training"])
}

test_an_evaluation_file_found_in_the_training_data_is_refused if {
	overlap := [{"dataset": "records", "version": 4, "path": "shards/0.npz", "sha256": "ab", "evaluation_path": "shards/7.npz", "match": "content"}]
	_refused(_with("overlap", overlap), ["eval-set-in-training"])
}

# no-champion

test_no_champion_is_refused_and_every_metric_shown_missing if {
	d := _decide(_with_report("champion", null))
	d.promote == false
	d.reasons == ["no-champion"]
	[m.verdict | some m in d.metrics] == ["missing", "missing"]
	[m.champion | some m in d.metrics] == [null, null]
}

# metric-missing

test_a_metric_the_challenger_lacks_is_refused if {
	_refused(_with_challenger({"accuracy": 0.85}), ["metric-missing"])
}

test_a_metric_that_is_not_a_number_is_refused if {
	_refused(_with_challenger({"accuracy": 0.85, "log-loss": "0.52"}), ["metric-missing"])
}

test_a_metric_the_champion_lacks_is_refused if {
	champion := {"digest": "sha256:aaaa", "metrics": {"log-loss": 0.50}}
	_refused(_with_report("champion", champion), ["metric-missing"])
}

# no-improvement

test_an_improvement_below_the_absolute_minimum_is_refused if {
	_refused(_with_challenger({"accuracy": 0.805, "log-loss": 0.50}), ["no-improvement"])
}

test_an_improvement_below_the_relative_minimum_is_refused if {
	# +0.05 meets 0.01, not 10% of 0.80
	accuracy := object.union(_accuracy, {"min_relative_improvement": 0.1})
	_refused(_with_loop("metrics", [accuracy, _log_loss]), ["no-improvement"])
}

test_an_equal_challenger_is_refused if {
	_refused(_with_challenger({"accuracy": 0.80, "log-loss": 0.50}), ["no-improvement"])
}

test_a_worse_target_is_refused if {
	d := _decide(_with_challenger({"accuracy": 0.70, "log-loss": 0.50}))
	d.reasons == ["no-improvement"]
	d.metrics[0].verdict == "not-improved"
}

test_an_improvement_of_exactly_the_minimum_counts_despite_binary_rounding if {
	# 0.58 - 0.57 is 0.00999...98 in binary floating point
	accuracy := object.union(_accuracy, {"min_relative_improvement": 0.001})
	champion := {"digest": "sha256:aaaa", "metrics": {"accuracy": 0.57, "log-loss": 0.50}}
	doc := object.union(_with_loop("metrics", [accuracy, _log_loss]), {"report": object.union(_report, {
		"champion": champion,
		"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.58, "log-loss": 0.50}},
	})})
	_promoted(doc)
}

test_zero_minima_still_need_a_change_above_nothing if {
	accuracy := object.union(_accuracy, {"min_improvement": 0, "min_relative_improvement": 0})
	_refused(object.union(_with_loop("metrics", [accuracy, _log_loss]), {"report": object.union(_report, {"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.80, "log-loss": 0.50}}})}), ["no-improvement"])
}

test_a_loop_without_a_target_promotes_nothing if {
	_refused(_with_loop("metrics", [_log_loss]), ["no-improvement"])
}

test_a_lower_is_better_target_improves_downwards if {
	log_loss := object.union(_log_loss, {"min_improvement": 0.01, "min_relative_improvement": 0.01, "tolerance": null})
	accuracy := object.union(_accuracy, {"min_improvement": null, "min_relative_improvement": null, "tolerance": 0})
	better := object.union(_with_loop("metrics", [accuracy, log_loss]), {"report": object.union(_report, {"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.80, "log-loss": 0.40}}})})
	_promoted(better)
	worse := object.union(better, {"report": object.union(_report, {"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.80, "log-loss": 0.60}}})})
	_refused(worse, ["no-improvement"])
}

test_a_target_with_an_unknown_direction_is_refused if {
	accuracy := object.union(_accuracy, {"better": "sideways"})
	_refused(_with_loop("metrics", [accuracy, _log_loss]), ["no-improvement"])
}

# A guard that got better (its minima null, as the plan carries a guard's) is within its tolerance.
test_a_guard_that_improved_is_within_tolerance if {
	log_loss := object.union(_log_loss, {"min_improvement": null, "min_relative_improvement": null})
	d := _decide(object.union(_with_loop("metrics", [_accuracy, log_loss]), {"report": object.union(_report, {"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.85, "log-loss": 0.30}}})}))
	d.promote == true
	d.reasons == []
	d.metrics[1].verdict == "within-tolerance"
}

# metric-regressed

test_a_guard_worse_beyond_its_tolerance_is_refused if {
	d := _decide(_with_challenger({"accuracy": 0.85, "log-loss": 0.60}))
	d.promote == false
	d.reasons == ["metric-regressed"]
	d.metrics[1].verdict == "regressed"
}

test_a_guard_without_tolerance_may_not_be_worse_at_all if {
	log_loss := object.union(_log_loss, {"tolerance": null})
	_promoted(object.union(_with_loop("metrics", [_accuracy, log_loss]), {"report": object.union(_report, {"challenger": {"digest": "sha256:bbbb", "metrics": {"accuracy": 0.85, "log-loss": 0.50}}})}))
	_refused(_with_loop("metrics", [_accuracy, log_loss]), ["metric-regressed"])
}

test_a_guard_with_an_unknown_direction_is_refused if {
	log_loss := object.union(_log_loss, {"better": "sideways"})
	_refused(_with_loop("metrics", [_accuracy, log_loss]), ["metric-regressed"])
}

# sign-off

_signers := {"by": ["dr.ade@health.example", "ciso@health.example"]}

_signed := {"by": "ciso@health.example", "challenger": "sha256:bbbb", "verified": true}

_needs_sign_off := _with_loop("sign_off", _signers)

test_a_verified_sign_off_by_a_named_person_promotes if {
	_promoted(object.union(_needs_sign_off, {"sign_off": _signed}))
}

test_without_the_sign_off_it_requires_nothing_is_promoted if {
	_refused(_needs_sign_off, ["sign-off-missing"])
}

test_a_loop_whose_sign_off_setting_is_absent_requires_one if {
	_refused(_with("loop", object.remove(_loop, ["sign_off"])), ["sign-off-missing"])
}

test_a_sign_off_is_not_needed_when_the_loop_asks_none if {
	_promoted(_with("sign_off", null))
}

test_an_unverified_sign_off_is_refused if {
	_refused(object.union(_needs_sign_off, {"sign_off": object.union(_signed, {"verified": false})}), ["sign-off-unverified"])
	_refused(object.union(_needs_sign_off, {"sign_off": object.remove(_signed, ["verified"])}), ["sign-off-unverified"])
}

test_a_sign_off_by_someone_not_named_is_refused if {
	_refused(object.union(_needs_sign_off, {"sign_off": object.union(_signed, {"by": "intern@health.example"})}), ["sign-off-not-allowed"])
}

test_a_sign_off_of_another_challenger_is_refused if {
	_refused(object.union(_needs_sign_off, {"sign_off": object.union(_signed, {"challenger": "sha256:aaaa"})}), ["sign-off-mismatch"])
}
