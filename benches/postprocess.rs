//! Per-frame cost of frame interpolation (RIFE 4.22 lite, 4.22 and 4.25/4.26 at their released
//! widths: blocks 192/128/64/32, 256/192/96/48 and 192/128/96/64/32; the versions alternate
//! within each round, medians reported) and of
//! the compact Real-ESRGAN x4 upscaler (`realesr-animevideov3` size: 64 features, 16 convs; tiles
//! of 256 with a 18-pixel border) and the RRDBNet x4 upscaler (`RealESRGAN_x4plus` size: 64
//! features, 23 RRDBs, growth 32; `Upscaler::upscale_frames`, tiles of 256 with a 32-pixel border)
//! on the CPU backend, random weights (they do not change the work). `--skip-rrdb` leaves out the
//! slowest one, `--rife-only` both upscalers.
//!
//! `cargo bench --bench postprocess [-- --size 640x384 --scale 1 --repeats 3]`: prints the
//! seconds per interpolated frame (one `IFNet` call: two Head passes, four IFBlocks, eight
//! warps) for the size and scale. Not a test: nothing is asserted about speed.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use omni::pipeline::backend::CpuBackend;
use omni::postprocess::realesrgan::{SRVGGNetCompact, Upscaler};
use omni::postprocess::rife::{IFNet, IFNetVersion};
use omni::postprocess::rrdbnet::RRDBNet;

fn main() {
    let (mut w, mut h, mut scale, mut repeats) = (640usize, 384usize, 1.0f64, 3usize);
    let (mut skip_rrdb, mut rife_only) = (false, false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => {
                let v = it.next().unwrap();
                let (a, b) = v.split_once('x').unwrap();
                (w, h) = (a.parse().unwrap(), b.parse().unwrap());
            }
            "--scale" => scale = it.next().unwrap().parse().unwrap(),
            "--repeats" => repeats = it.next().unwrap().parse().unwrap(),
            "--skip-rrdb" => skip_rrdb = true,
            "--rife-only" => rife_only = true,
            _ => {}
        }
    }
    let _ = omni::pipeline::backend::init_threads(None);
    let device = Default::default();
    let img =
        || Tensor::<CpuBackend, 4>::random([1, 3, h, w], Distribution::Uniform(0.0, 1.0), &device);
    let (a, b) = (img(), img());
    let nets: Vec<IFNet<CpuBackend>> = IFNetVersion::ALL
        .into_iter()
        .map(|v| IFNet::random(v, &device))
        .collect();
    // Warm-up (allocations, thread pool), then rounds that alternate the versions.
    for net in &nets {
        let _ = net
            .interpolate(a.clone(), b.clone(), 0.5, scale)
            .into_data();
    }
    let mut times = vec![Vec::new(); nets.len()];
    for _ in 0..repeats {
        for (net, times) in nets.iter().zip(&mut times) {
            let t = Instant::now();
            let _ = net
                .interpolate(a.clone(), b.clone(), 0.5, scale)
                .into_data();
            times.push(t.elapsed().as_secs_f64());
        }
    }
    for (net, times) in nets.iter().zip(&mut times) {
        times.sort_by(f64::total_cmp);
        let widths: Vec<String> = net
            .version()
            .released_widths()
            .iter()
            .map(|c| c.to_string())
            .collect();
        println!(
            "RIFE {} ({}, f32, CPU backend, {} threads) {w}x{h} scale {scale}: {:.3} s per interpolated frame (median; best {:.3} s, {repeats} runs)",
            net.version(),
            widths.join("/"),
            rayon::current_num_threads(),
            times[times.len() / 2],
            times[0]
        );
    }
    if rife_only {
        return;
    }
    let up = SRVGGNetCompact::<CpuBackend>::random(64, 16, 4, &device);
    let _ = up
        .forward_tiled(a.clone(), 256, up.receptive_radius())
        .into_data();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let _ = up
            .forward_tiled(a.clone(), 256, up.receptive_radius())
            .into_data();
        times.push(t.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "SRVGGNetCompact x4 (64 feat, 16 convs, f32, CPU backend) {w}x{h} -> {}x{}, tiles 256: {mean:.3} s per frame (best {best:.3} s, {repeats} runs)",
        w * 4,
        h * 4
    );
    if skip_rrdb {
        return;
    }
    let up = Upscaler::Rrdb(RRDBNet::<CpuBackend>::random(64, 23, 32, 4, &device));
    let mut times = Vec::new();
    for _ in 0..repeats.min(2) {
        let t = Instant::now();
        let _ = up.upscale_frames(a.clone(), 4).into_data();
        times.push(t.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "RRDBNet x4 (RealESRGAN_x4plus size: 64 feat, 23 RRDBs, f32, CPU backend) {w}x{h} -> {}x{}, tiles 256 + 32 context: {mean:.3} s per frame (best {best:.3} s, {} runs, no warm-up)",
        w * 4,
        h * 4,
        times.len()
    );
}
