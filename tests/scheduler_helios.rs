//! `HeliosScheduler` (Helios-Base and Helios-Mid): config parsing, stage tables, schedules, and
//! UniPC / Euler step sequences replayed from the host-side step plans.
//!
//! References come from `tests/fixtures/reference/scheduler_helios.safetensors`, written by
//! diffusers 0.42.1 itself (`make_helios_scheduler_reference` in `tests/fixtures/make_fixtures.py`):
//! the Base config (one stage, UniPC, dynamic exponential shift) at 384×640 with 50 steps, the Mid
//! config (three stages) with [20, 20, 20], and `HeliosScheduler.step` driven by seeded random
//! model outputs on `[1, 4, 2, 3, 3]` float32 tensors.

mod common;

use common::{Reference, max_abs_diff_slice};
use omni::pipeline::schedulers::scheduling_helios::{
    HeliosScheduler, HeliosSchedulerConfig, HeliosSolver, SchedulerType, SolverHistory, SolverType,
    StepPlan,
};
use omni::pipeline::schedulers::{SchedulerError, TimeShiftType, pyramid_image_seq_len};

/// Tables and schedules are float64 on both sides with the same operation order.
const TABLE_TOL: f64 = 1e-10;
/// Step outputs are float32 in diffusers; the Rust side combines the same f32 tensors with
/// expanded f64 weights rounded to f32, so only float32 rounding separates them.
const STEP_TOL: f64 = 1e-5;

fn reference() -> Reference {
    Reference::open("scheduler_helios.safetensors")
}

/// Base: one stage, UniPC, dynamic exponential shift (helios.md §5.1).
fn base_config() -> HeliosSchedulerConfig {
    HeliosSchedulerConfig {
        stages: 1,
        stage_range: vec![0.0, 1.0],
        use_dynamic_shifting: true,
        ..Default::default()
    }
}

/// Mid: three stages, UniPC, dynamic exponential shift.
fn mid_config() -> HeliosSchedulerConfig {
    HeliosSchedulerConfig {
        use_dynamic_shifting: true,
        ..Default::default()
    }
}

/// `np.linspace(0.999, 0.0, n + 1)[:-1]`, what `HeliosPipeline.__call__` passes as `sigmas`.
fn base_sigmas(n: usize) -> Vec<f64> {
    let mut s = omni::pipeline::schedulers::linspace(0.999, 0.0, n + 1);
    s.pop();
    s
}

/// `mu` of the Base pipeline at 384×640: `9·48·80 / 4 = 8640` tokens.
fn base_mu(s: &HeliosScheduler) -> f64 {
    s.calculate_shift(9 * 48 * 80 / 4)
}

/// `mu` of Mid stage `stage` at 384×640 (stage-0 latent 9×12×20, measured before the upsample).
fn mid_mu(s: &HeliosScheduler, stage: usize) -> f64 {
    s.calculate_shift(pyramid_image_seq_len(stage, [9, 12, 20], [1, 2, 2]))
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = max_abs_diff_slice(got, want);
    assert!(
        err <= tol,
        "{what}: max abs error {err:e} > {tol:e}\n got  {got:?}\n want {want:?}"
    );
    eprintln!("{what}: max abs error {err:e}");
    err
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn config_defaults_match_diffusers_init() {
    let c = HeliosSchedulerConfig::from_json_str("{}").unwrap();
    assert_eq!(c, HeliosSchedulerConfig::default());
    assert_eq!((c.num_train_timesteps, c.shift, c.stages), (1000, 1.0, 3));
    assert_eq!(c.stage_range, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
    assert_eq!(c.gamma, 1.0 / 3.0);
    assert_eq!((c.solver_order, c.predict_x0), (2, true));
    assert_eq!(c.solver_type, SolverType::Bh2);
    assert!(c.lower_order_final && c.use_flow_sigmas && !c.thresholding);
    assert!(c.disable_corrector.is_empty() && c.solver_p.is_none());
    assert_eq!(c.scheduler_type, SchedulerType::Unipc);
    assert!(!c.use_dynamic_shifting);
    assert_eq!(c.time_shift_type, TimeShiftType::Exponential);
}

#[test]
fn config_parses_a_diffusers_written_base_config() {
    // HeliosScheduler(**BASE_SCHEDULER).to_json_string() of diffusers 0.42.1.
    let text = r#"{
      "_class_name": "HeliosScheduler", "_diffusers_version": "0.42.1",
      "disable_corrector": [], "gamma": 0.3333333333333333, "lower_order_final": true,
      "num_train_timesteps": 1000, "predict_x0": true, "prediction_type": "flow_prediction",
      "scheduler_type": "unipc", "shift": 1.0, "solver_order": 2, "solver_p": null,
      "solver_type": "bh2", "stage_range": [0, 1], "stages": 1, "thresholding": false,
      "time_shift_type": "exponential", "use_dynamic_shifting": true, "use_flow_sigmas": true
    }"#;
    let c = HeliosSchedulerConfig::from_json_str(text).unwrap();
    assert_eq!(
        c,
        HeliosSchedulerConfig {
            diffusers_version: Some("0.42.1".into()),
            ..base_config()
        }
    );
    assert!(c.unknown_keys().is_empty());
    HeliosScheduler::new(c).unwrap();
}

#[test]
fn config_accepts_integers_written_as_floats_and_solver_type_aliases() {
    let c = HeliosSchedulerConfig::from_json_str(
        r#"{"num_train_timesteps": 1000.0, "stages": 3.0, "solver_type": "midpoint"}"#,
    )
    .unwrap();
    assert_eq!((c.num_train_timesteps, c.stages), (1000, 3));
    assert_eq!(c.solver_type, SolverType::Bh2);
    assert!(HeliosSchedulerConfig::from_json_str(r#"{"stages": 1.5}"#).is_err());
}

#[test]
fn dmd_scheduler_type_is_a_parse_error() {
    let err = HeliosSchedulerConfig::from_json_str(r#"{"scheduler_type": "dmd"}"#).unwrap_err();
    assert!(matches!(err, SchedulerError::Parse(_)), "{err}");
}

#[test]
fn conflicting_or_unsupported_options_fail_at_construction() {
    let cases: Vec<(&str, HeliosSchedulerConfig)> = vec![
        (
            "shift with dynamic shifting",
            HeliosSchedulerConfig {
                shift: 3.0,
                ..mid_config()
            },
        ),
        (
            "thresholding",
            HeliosSchedulerConfig {
                thresholding: true,
                ..mid_config()
            },
        ),
        (
            "predict_x0 false",
            HeliosSchedulerConfig {
                predict_x0: false,
                ..mid_config()
            },
        ),
        (
            "solver_order 3",
            HeliosSchedulerConfig {
                solver_order: 3,
                ..mid_config()
            },
        ),
        (
            "solver_p",
            HeliosSchedulerConfig {
                solver_p: Some(serde_json::json!({"_class_name": "DPMSolverMultistepScheduler"})),
                ..mid_config()
            },
        ),
        (
            "short stage_range",
            HeliosSchedulerConfig {
                stage_range: vec![0.0, 0.5],
                ..mid_config()
            },
        ),
        (
            "gamma above 1/3",
            HeliosSchedulerConfig {
                gamma: 0.5,
                ..mid_config()
            },
        ),
    ];
    for (what, c) in cases {
        let err = HeliosScheduler::new(c).unwrap_err();
        assert!(matches!(err, SchedulerError::Invalid(_)), "{what}: {err}");
    }
    let wrong_class = HeliosSchedulerConfig {
        class_name: "HeliosDMDScheduler".into(),
        ..mid_config()
    };
    assert!(matches!(
        HeliosScheduler::new(wrong_class).unwrap_err(),
        SchedulerError::WrongClass { .. }
    ));
}

#[test]
fn set_timesteps_rejects_missing_mu_stage_and_mismatched_sigmas() {
    let base = HeliosScheduler::new(base_config()).unwrap();
    assert!(matches!(
        base.set_timesteps(3, None, Some(&base_sigmas(3)), None),
        Err(SchedulerError::MissingMu)
    ));
    assert!(matches!(
        base.set_timesteps(4, None, Some(&base_sigmas(3)), Some(1.0)),
        Err(SchedulerError::Invalid(_))
    ));
    let mid = HeliosScheduler::new(mid_config()).unwrap();
    assert!(matches!(
        mid.set_timesteps(4, None, None, Some(1.0)),
        Err(SchedulerError::StageOutOfRange { .. })
    ));
    assert!(matches!(
        mid.set_timesteps(4, Some(3), None, Some(1.0)),
        Err(SchedulerError::StageOutOfRange {
            stage: 3,
            stages: 3
        })
    ));
    assert!(matches!(
        mid.set_timesteps(3, Some(0), Some(&base_sigmas(3)), Some(1.0)),
        Err(SchedulerError::Invalid(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Tables and schedules

fn check_tables(prefix: &str, s: &HeliosScheduler) {
    let r = reference();
    let t = s.tables();
    assert_close(
        &format!("{prefix}.init.sigmas"),
        &t.sigmas,
        &r.f64s(&format!("{prefix}.init.sigmas")).1,
        TABLE_TOL,
    );
    assert_close(
        &format!("{prefix}.init.timesteps"),
        &t.timesteps,
        &r.f64s(&format!("{prefix}.init.timesteps")).1,
        TABLE_TOL,
    );
    for (name, got) in [
        ("start_sigmas", &t.start_sigmas),
        ("end_sigmas", &t.end_sigmas),
        ("ori_start_sigmas", &t.ori_start_sigmas),
    ] {
        let key = format!("{prefix}.{name}");
        assert_close(&key, got, &r.f64s(&key).1, TABLE_TOL);
    }
    let ratios: Vec<f64> = t
        .timestep_ratios
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .collect();
    let key = format!("{prefix}.timestep_ratios");
    assert_close(&key, &ratios, &r.f64s(&key).1, TABLE_TOL);
    for stage in 0..s.config().stages {
        let key = format!("{prefix}.timesteps_per_stage.{stage}");
        assert_close(
            &key,
            &t.timesteps_per_stage[stage],
            &r.f64s(&key).1,
            TABLE_TOL,
        );
        let key = format!("{prefix}.sigmas_per_stage.{stage}");
        assert_close(&key, &t.sigmas_per_stage[stage], &r.f64s(&key).1, TABLE_TOL);
    }
}

#[test]
fn base_stage_tables_match_diffusers() {
    check_tables("base", &HeliosScheduler::new(base_config()).unwrap());
}

#[test]
fn mid_stage_tables_match_diffusers() {
    check_tables("mid", &HeliosScheduler::new(mid_config()).unwrap());
}

#[test]
fn base50_schedule_matches_diffusers() {
    let r = reference();
    let s = HeliosScheduler::new(base_config()).unwrap();
    let mu = base_mu(&s);
    assert_close("base50.mu", &[mu], &r.f64s("base50.mu").1, 1e-15);
    let solver = s
        .set_timesteps(50, None, Some(&base_sigmas(50)), Some(mu))
        .unwrap();
    assert_eq!(solver.len(), 50);
    assert_eq!(solver.sigmas().len(), 51);
    assert_close(
        "base50.timesteps",
        solver.timesteps(),
        &r.f64s("base50.timesteps").1,
        TABLE_TOL,
    );
    assert_close(
        "base50.sigmas",
        solver.sigmas(),
        &r.f64s("base50.sigmas").1,
        TABLE_TOL,
    );
    // helios.md §5.2 (printed with 3 decimals): t = 999.853, 996.866, 993.772, …, 121.995.
    let t = solver.timesteps();
    for (got, want) in [
        (t[0], 999.853),
        (t[1], 996.866),
        (t[2], 993.772),
        (t[49], 121.995),
    ] {
        assert!((got - want).abs() < 5e-4, "{got} vs {want}");
    }
}

#[test]
fn mid20_schedules_match_diffusers() {
    let r = reference();
    let s = HeliosScheduler::new(mid_config()).unwrap();
    for stage in 0..3 {
        let mu = mid_mu(&s, stage);
        let key = format!("mid20.stage{stage}");
        assert_close(
            &format!("{key}.mu"),
            &[mu],
            &r.f64s(&format!("{key}.mu")).1,
            1e-15,
        );
        let solver = s.set_timesteps(20, Some(stage), None, Some(mu)).unwrap();
        assert_eq!((solver.len(), solver.sigmas().len()), (20, 21));
        assert_close(
            &format!("{key}.timesteps"),
            solver.timesteps(),
            &r.f64s(&format!("{key}.timesteps")).1,
            TABLE_TOL,
        );
        assert_close(
            &format!("{key}.sigmas"),
            solver.sigmas(),
            &r.f64s(&format!("{key}.sigmas")).1,
            TABLE_TOL,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Step sequences

/// `Σ c_k·t_k` the way a float32 tensor backend does it: each weight rounded to f32, products and
/// sums in f32.
fn combine_f32(terms: &[(f64, &Vec<f32>)]) -> Vec<f32> {
    let n = terms[0].1.len();
    let mut out = vec![0.0f32; n];
    for (c, t) in terms {
        let c = *c as f32;
        for (o, v) in out.iter_mut().zip(t.iter()) {
            *o += c * v;
        }
    }
    out
}

fn f32s(r: &Reference, name: &str) -> Vec<f32> {
    r.f64s(name).1.into_iter().map(|v| v as f32).collect()
}

/// Replays `{prefix}.*` through `solver`'s plans and returns the max error over all steps.
fn replay(prefix: &str, mut solver: HeliosSolver) -> f64 {
    let r = reference();
    assert_close(
        &format!("{prefix}.timesteps"),
        solver.timesteps(),
        &r.f64s(&format!("{prefix}.timesteps")).1,
        TABLE_TOL,
    );
    assert_close(
        &format!("{prefix}.sigmas"),
        solver.sigmas(),
        &r.f64s(&format!("{prefix}.sigmas")).1,
        TABLE_TOL,
    );
    let mut history = SolverHistory::new();
    let mut x = f32s(&r, &format!("{prefix}.sample"));
    let mut worst = 0.0f64;
    for i in 0..solver.len() {
        let v = f32s(&r, &format!("{prefix}.v.{i}"));
        let plan = solver.step_plan(i);
        x = history.step(&plan, x, v, combine_f32);
        let want = r.f64s(&format!("{prefix}.prev.{i}")).1;
        let got: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let err = max_abs_diff_slice(&got, &want);
        assert!(
            err <= STEP_TOL,
            "{prefix} step {i}: max abs error {err:e} > {STEP_TOL:e} (plan {plan:?})"
        );
        worst = worst.max(err);
    }
    eprintln!("{prefix}: {} steps, max abs error {worst:e}", solver.len());
    worst
}

#[test]
fn unipc_base3_sequence_matches_diffusers() {
    let s = HeliosScheduler::new(base_config()).unwrap();
    let solver = s
        .set_timesteps(3, None, Some(&base_sigmas(3)), Some(base_mu(&s)))
        .unwrap();
    replay("unipc.base3", solver);
}

#[test]
fn unipc_base50_sequence_matches_diffusers() {
    let s = HeliosScheduler::new(base_config()).unwrap();
    let solver = s
        .set_timesteps(50, None, Some(&base_sigmas(50)), Some(base_mu(&s)))
        .unwrap();
    replay("unipc.base50", solver);
}

#[test]
fn euler_base3_sequence_matches_diffusers() {
    let s = HeliosScheduler::new(HeliosSchedulerConfig {
        scheduler_type: SchedulerType::Euler,
        ..base_config()
    })
    .unwrap();
    let solver = s
        .set_timesteps(3, None, Some(&base_sigmas(3)), Some(base_mu(&s)))
        .unwrap();
    replay("euler.base3", solver);
}

#[test]
fn unipc_mid_stages_4_steps_match_diffusers_with_history_reset() {
    // diffusers ran stage 1 right after stage 0 on the same scheduler object: the stage-1
    // sequence only matches if set_timesteps reset the history.
    let s = HeliosScheduler::new(mid_config()).unwrap();
    for stage in 0..2 {
        let solver = s
            .set_timesteps(4, Some(stage), None, Some(mid_mu(&s, stage)))
            .unwrap();
        replay(&format!("unipc.mid4.stage{stage}"), solver);
    }
}

#[test]
fn unipc_mid20_sequences_match_diffusers() {
    let s = HeliosScheduler::new(mid_config()).unwrap();
    for stage in 0..3 {
        let solver = s
            .set_timesteps(20, Some(stage), None, Some(mid_mu(&s, stage)))
            .unwrap();
        replay(&format!("unipc.mid20.stage{stage}"), solver);
    }
}

#[test]
fn unipc_orders_warm_up_and_lower_at_the_end() {
    let s = HeliosScheduler::new(base_config()).unwrap();
    let mut solver = s
        .set_timesteps(5, None, Some(&base_sigmas(5)), Some(base_mu(&s)))
        .unwrap();
    let mut orders = Vec::new();
    for i in 0..5 {
        let StepPlan::UniPc(p) = solver.step_plan(i) else {
            panic!("unipc config planned a non-UniPC step")
        };
        assert_eq!(p.corrector.is_some(), i > 0, "corrector at step {i}");
        if let Some(c) = p.corrector {
            // the corrector runs at the previous predictor's order
            assert_eq!(c.order, *orders.last().unwrap());
            if c.order == 1 {
                assert_eq!(c.x0[2], 0.0);
            }
        }
        if p.predictor.order == 1 {
            assert_eq!(p.predictor.x0[1], 0.0);
        }
        orders.push(p.predictor.order);
    }
    // order 1 warm-up, order 2, lower_order_final on the last step.
    assert_eq!(orders, vec![1, 2, 2, 2, 1]);
}

#[test]
fn disable_corrector_drops_the_corrector_after_the_listed_step() {
    let s = HeliosScheduler::new(HeliosSchedulerConfig {
        disable_corrector: vec![1],
        ..base_config()
    })
    .unwrap();
    let mut solver = s
        .set_timesteps(4, None, Some(&base_sigmas(4)), Some(base_mu(&s)))
        .unwrap();
    let has_corrector: Vec<bool> = (0..4)
        .map(|i| match solver.step_plan(i) {
            StepPlan::UniPc(p) => p.corrector.is_some(),
            StepPlan::Euler(_) => unreachable!(),
        })
        .collect();
    assert_eq!(has_corrector, vec![false, true, false, true]);
}

#[test]
#[should_panic(expected = "step_plan: expected step 0")]
fn steps_must_be_planned_in_order() {
    let s = HeliosScheduler::new(base_config()).unwrap();
    let mut solver = s
        .set_timesteps(3, None, Some(&base_sigmas(3)), Some(base_mu(&s)))
        .unwrap();
    solver.step_plan(1);
}

#[test]
fn renoise_coefficients_match_helios_md() {
    let s = HeliosScheduler::new(mid_config()).unwrap();
    let (a1, b1) = s.stage_renoise_coeffs(1);
    let (a2, b2) = s.stage_renoise_coeffs(2);
    for (got, want) in [
        (a1, 0.600120),
        (b1, 0.692612),
        (a2, 0.749813),
        (b2, 0.433337),
    ] {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}

#[test]
fn single_stage_without_sigmas_matches_diffusers_float32_branch() {
    let r = reference();
    // diffusers' own test config: stages=1, stage_range=[0, 1], dynamic (exponential) shift.
    let dynamic = HeliosScheduler::new(base_config()).unwrap();
    let solver = dynamic.set_timesteps(4, None, None, Some(1.0)).unwrap();
    assert_close(
        "f32dyn.timesteps",
        solver.timesteps(),
        &r.f64s("f32dyn.timesteps").1,
        0.0,
    );
    assert_close(
        "f32dyn.sigmas",
        solver.sigmas(),
        &r.f64s("f32dyn.sigmas").1,
        0.0,
    );
    // Fixed shift 3.0 goes through the exponential time_shift too (effective shift e³), as in
    // diffusers.
    let shifted = HeliosScheduler::new(HeliosSchedulerConfig {
        shift: 3.0,
        use_dynamic_shifting: false,
        ..base_config()
    })
    .unwrap();
    let solver = shifted.set_timesteps(4, None, None, None).unwrap();
    assert_close(
        "f32shift.timesteps",
        solver.timesteps(),
        &r.f64s("f32shift.timesteps").1,
        0.0,
    );
    assert_close(
        "f32shift.sigmas",
        solver.sigmas(),
        &r.f64s("f32shift.sigmas").1,
        0.0,
    );
}

#[test]
fn shipped_base_and_mid_configs_parse_and_build() {
    for (name, want) in [("helios-base", base_config()), ("helios-mid", mid_config())] {
        let dir = common::fixture("configs").join(name);
        let c = HeliosSchedulerConfig::from_file(&dir.join("scheduler_config.json")).unwrap();
        assert!(
            c.unknown_keys().is_empty(),
            "{name}: {:?}",
            c.unknown_keys()
        );
        assert_eq!(
            c,
            HeliosSchedulerConfig {
                diffusers_version: c.diffusers_version.clone(),
                ..want
            },
            "{name}"
        );
        HeliosScheduler::new(c).unwrap();

        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model_index.json")).unwrap())
                .unwrap();
        assert_eq!(index["scheduler"][1], "HeliosScheduler", "{name}");
        let (class, zero_star) = match name {
            "helios-base" => ("HeliosPipeline", serde_json::Value::Null),
            _ => ("HeliosPyramidPipeline", serde_json::Value::Bool(true)),
        };
        assert_eq!(index["_class_name"], class, "{name}");
        assert_eq!(index["is_cfg_zero_star"], zero_star, "{name}");
    }
}
