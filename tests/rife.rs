//! RIFE IFNet 4.22 lite, 4.22, 4.25, 4.26 and 4.26 heavy against vsrife 5.7.0's PyTorch classes
//! (`tests/fixtures/make_rife.py`: narrow IFNets with torch-initialised weights saved as
//! `flownet.pkl`, four cases at two sizes and three inference scales each), the version detection,
//! and the frame bookkeeping of [`InterpolatingSink`].

mod common;

use burn::tensor::Tensor;
use common::{Collect, Reference, TestBackend, fixture, max_abs_diff};
use omni::pipeline::generator::{FrameSink, VideoFrames};
use omni::postprocess::rife::{IFNet, IFNetVersion, InterpolatingSink, RifeError};

/// Max abs error allowed against vsrife (f32 on both sides; grid_sample and bilinear resizes
/// differ in summation order only).
const RIFE_TOL: f64 = 1e-4;

fn net() -> IFNet<TestBackend> {
    IFNet::load(&fixture("rife/flownet.pkl"), &Default::default()).unwrap()
}

/// The cases of `make_rife.py`: (name, inference scale); 64x96 and 72x120.
const CASES: [(&str, f64); 4] = [
    ("s1_64x96", 1.0),
    ("s05_64x96", 0.5),
    ("s1_72x120", 1.0),
    ("s2_72x120", 2.0),
];

/// `net` on every case against the outputs named `{prefix}{case}.out` in `outputs` (the inputs
/// are always those of `rife.safetensors`).
fn assert_matches_vsrife(net: &IFNet<TestBackend>, outputs: &Reference, prefix: &str) {
    let inputs = Reference::open("rife.safetensors");
    let device = Default::default();
    for (case, scale) in CASES {
        let img0 = inputs.tensor::<TestBackend, 4>(&format!("{case}.img0"), &device);
        let img1 = inputs.tensor::<TestBackend, 4>(&format!("{case}.img1"), &device);
        let want = outputs.tensor::<TestBackend, 4>(&format!("{prefix}{case}.out"), &device);
        let got = net.interpolate(img0.clone(), img1, 0.5, scale);
        let err = max_abs_diff(got, want.clone());
        let moved = max_abs_diff(img0, want);
        eprintln!(
            "RIFE {} {case}: max abs error vs vsrife {err:.3e} (output differs from img0 by {moved:.3})",
            net.version()
        );
        assert!(err <= RIFE_TOL, "{prefix}{case}: {err}");
        assert!(moved > 0.05, "the case must not be trivial");
    }
}

#[test]
fn ifnet_matches_vsrife_at_two_sizes_and_three_scales() {
    let net = net();
    assert_eq!(net.version(), IFNetVersion::V4_22Lite);
    assert_matches_vsrife(&net, &Reference::open("rife.safetensors"), "");
}

#[test]
fn ifnet_4_22_4_25_4_26_and_4_26_heavy_match_vsrife_at_two_sizes_and_three_scales() {
    let outputs = Reference::open("rife_versions.safetensors");
    for (dir, version) in [
        ("v4_22", IFNetVersion::V4_22),
        ("v4_25", IFNetVersion::V4_25),
        ("v4_26", IFNetVersion::V4_25),
        ("v4_26_heavy", IFNetVersion::V4_26Heavy),
    ] {
        let net = IFNet::<TestBackend>::load(
            &fixture(&format!("rife/{dir}/flownet.pkl")),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(net.version(), version, "{dir}");
        assert_matches_vsrife(&net, &outputs, &format!("{dir}."));
    }
}

fn frames(n: usize, offset: usize) -> VideoFrames {
    let (h, w) = (32, 48);
    let data = (0..n * h * w * 3)
        .map(|i| (((i / 3 + offset * 7) % 97) as f32) / 96.0)
        .collect();
    VideoFrames {
        data,
        frames: n,
        height: h,
        width: w,
    }
}

#[test]
fn exp_n_makes_n_minus_1_times_2_pow_n_plus_1_frames_across_chunks() {
    let net = net();
    for exp in [1u32, 2] {
        let mut collect = Collect::default();
        {
            let mut sink = InterpolatingSink::new(&net, exp, 1.0, &mut collect);
            sink.push_frames(frames(3, 0)).unwrap();
            sink.push_frames(frames(2, 3)).unwrap();
        }
        let counts: Vec<usize> = collect.0.iter().map(|f| f.frames).collect();
        let m = 1usize << exp;
        // Chunk 1: 3 frames → 2 gaps; chunk 2: 2 frames, the gap to chunk 1's last frame included.
        assert_eq!(counts, vec![2 * m + 1, 2 * m], "exp {exp}");
        assert_eq!(counts.iter().sum::<usize>(), (5 - 1) * m + 1);
        // The original frames pass through unchanged at every 2^exp-th position.
        let all: Vec<f32> = collect
            .0
            .iter()
            .flat_map(|f| f.data.iter().copied())
            .collect();
        let per = 32 * 48 * 3;
        let orig: Vec<f32> = frames(3, 0)
            .data
            .into_iter()
            .chain(frames(2, 3).data)
            .collect();
        for k in 0..5 {
            let got = &all[k * m * per..(k * m + 1) * per];
            let want = &orig[k * per..(k + 1) * per];
            assert!(
                got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
                "frame {k}"
            );
        }
    }
}

#[test]
fn a_non_rife_file_is_an_error_naming_it() {
    let e = IFNet::<TestBackend>::load(&fixture("lora/wan_orig.safetensors"), &Default::default())
        .unwrap_err();
    assert!(matches!(e, RifeError::File { .. }), "{e}");
    assert!(e.to_string().contains("wan_orig.safetensors"), "{e}");
    let _ = Tensor::<TestBackend, 1>::zeros([1], &Default::default());
    // A PyTorch pickle of another model: no IFNet layout matches, and the error says which exist.
    let e = IFNet::<TestBackend>::load(&fixture("esrgan/srvgg_x4.pth"), &Default::default())
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RifeError::File { .. }), "{e}");
    assert!(msg.contains("srvgg_x4.pth"), "{msg}");
    assert!(msg.contains("no RIFE IFNet layout matches"), "{msg}");
    assert!(msg.contains("4.25 and 4.26"), "{msg}");
    assert!(msg.contains("4.26 heavy"), "{msg}");
}
