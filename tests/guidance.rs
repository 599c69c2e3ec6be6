//! Classifier-free guidance and CFG-Zero* (`src/pipeline/guidance.rs`) against the pipeline lines
//! of diffusers 0.42.1 (`reference/guidance.safetensors`, `make_guidance_reference` in
//! `tests/fixtures/make_fixtures.py`) and against values worked out by hand.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{Reference, TestBackend, max_abs_diff};
use omni::pipeline::guidance::{Guidance, cfg, cfg_zero_star, optimized_scale, zero_init};

type B = TestBackend;

/// float32 on both sides; the reductions of `optimized_scale` sum 72 products in a different order.
const TOL: f64 = 1e-5;

fn tensor<const D: usize>(vals: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(vals.to_vec(), shape), &Default::default())
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn cfg_matches_diffusers() {
    let r = Reference::open("guidance.safetensors");
    let dev = Default::default();
    let scale = r.f64s("scale").1[0];
    let out = cfg(
        r.tensor::<B, 5>("v_cond", &dev),
        r.tensor::<B, 5>("v_uncond", &dev),
        scale,
    );
    let err = max_abs_diff(out, r.tensor::<B, 5>("cfg", &dev));
    eprintln!("cfg: max abs error {err:e}");
    assert!(err <= TOL, "cfg: {err:e}");
}

#[test]
fn optimized_scale_and_cfg_zero_star_match_diffusers() {
    let r = Reference::open("guidance.safetensors");
    let dev = Default::default();
    let v_c = r.tensor::<B, 5>("v_cond", &dev);
    let v_u = r.tensor::<B, 5>("v_uncond", &dev);
    let st = optimized_scale(&v_c, &v_u);
    assert_eq!(st.dims(), [2, 1, 1, 1, 1]);
    let st_err = max_abs_diff(st.reshape([2, 1]), r.tensor::<B, 2>("st_star", &dev));
    let out = cfg_zero_star(v_c, v_u, r.f64s("scale").1[0]);
    let err = max_abs_diff(out, r.tensor::<B, 5>("cfg_zero_star", &dev));
    eprintln!("optimized_scale: max abs error {st_err:e}; cfg_zero_star: {err:e}");
    assert!(st_err <= TOL && err <= TOL, "st {st_err:e}, out {err:e}");
}

#[test]
fn cfg_by_hand() {
    let v_c = tensor(&[1.0, 2.0, -1.0, 0.5], [1, 4]);
    let v_u = tensor(&[0.0, 1.0, 1.0, 0.5], [1, 4]);
    // v_u + 3·(v_c − v_u)
    assert_eq!(values(cfg(v_c, v_u, 3.0)), vec![3.0, 4.0, -5.0, 0.5]);
}

#[test]
fn cfg_zero_star_by_hand_is_per_sample() {
    // sample 0: v_c = (2, 0), v_u = (1, 0) → s* = 2/(1 + 1e-8) ≈ 2, s*·v_u = v_c → out = (2, 0)
    // sample 1: v_c = (0, 1), v_u = (1, 0) → s* = 0 → out = 4·v_c = (0, 4)
    let v_c = tensor(&[2.0, 0.0, 0.0, 1.0], [2, 2]);
    let v_u = tensor(&[1.0, 0.0, 1.0, 0.0], [2, 2]);
    let st = values(optimized_scale(&v_c, &v_u));
    assert!((st[0] - 2.0).abs() < 1e-6 && st[1] == 0.0, "{st:?}");
    let out = values(cfg_zero_star(v_c, v_u, 4.0));
    let want = [2.0, 0.0, 0.0, 4.0];
    for (g, w) in out.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{out:?} vs {want:?}");
    }
}

#[test]
fn zero_init_covers_stage_0_steps_up_to_zero_steps_only() {
    let g = Guidance::from_flags(5.0, true, true, 1);
    assert_eq!(
        g,
        Guidance::CfgZeroStar {
            scale: 5.0,
            use_zero_init: true,
            zero_steps: 1
        }
    );
    // `i <= zero_steps`: the first two steps of stage 0.
    assert!(g.zero_init_applies(0, 0) && g.zero_init_applies(0, 1));
    assert!(!g.zero_init_applies(0, 2));
    assert!(!g.zero_init_applies(1, 0) && !g.zero_init_applies(2, 1));
    assert!(!Guidance::from_flags(5.0, true, false, 1).zero_init_applies(0, 0));
    assert!(!Guidance::from_flags(5.0, false, true, 1).zero_init_applies(0, 0));

    let v_c = tensor(&[1.0, -2.0], [1, 2]);
    let v_u = tensor(&[3.0, 4.0], [1, 2]);
    assert_eq!(
        values(g.apply(v_c.clone(), Some(v_u.clone()), 0, 1)),
        vec![0.0, 0.0]
    );
    assert_eq!(values(zero_init(v_c.clone())), vec![0.0, 0.0]);
    let guided = values(g.apply(v_c.clone(), Some(v_u.clone()), 0, 2));
    assert_eq!(guided, values(cfg_zero_star(v_c, v_u, 5.0)));
}

#[test]
fn guidance_selection_follows_the_pipelines() {
    assert_eq!(Guidance::from_flags(1.0, true, true, 1), Guidance::None);
    assert_eq!(
        Guidance::from_flags(5.0, false, true, 1),
        Guidance::Cfg { scale: 5.0 }
    );
    assert!(!Guidance::None.needs_uncond());
    assert!(Guidance::Cfg { scale: 5.0 }.needs_uncond());
    let v_c = tensor(&[1.0, 2.0], [1, 2]);
    assert_eq!(
        values(Guidance::None.apply(v_c.clone(), None, 0, 0)),
        vec![1.0, 2.0]
    );
    let v_u = tensor(&[0.0, 0.0], [1, 2]);
    assert_eq!(
        values(Guidance::Cfg { scale: 2.0 }.apply(v_c, Some(v_u), 0, 0)),
        vec![2.0, 4.0]
    );
}
