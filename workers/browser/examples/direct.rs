//! The benchmark's baseline: the same Chromium, driven directly over its DevTools pipe from
//! the host (no sandbox, no broker): `direct CHROMIUM URL N` prints the cold start and the
//! warm `open` + `extract` times (median, p99) as one JSON line.

use std::{path::PathBuf, time::Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, chromium, url, n] = &args[..] else {
        return Err("usage: direct CHROMIUM URL N".into());
    };
    let n: usize = n.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let profile = tempdir()?;
        let t0 = Instant::now();
        let mut s =
            loong_worker_browser::Session::start(&PathBuf::from(chromium), &profile, None).await?;
        s.open(url).await?;
        s.extract(None).await?;
        let cold = t0.elapsed().as_micros();
        let mut warm = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            s.open(url).await?;
            s.extract(None).await?;
            warm.push(t.elapsed().as_micros());
        }
        warm.sort_unstable();
        let at = |q: f64| warm[((warm.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "{}",
            serde_json::json!({"cold_us": cold, "warm_median_us": at(0.5), "warm_p99_us": at(0.99), "n": n, "start": s.started})
        );
        s.close().await;
        let _ = std::fs::remove_dir_all(&profile);
        Ok(())
    })
}

fn tempdir() -> std::io::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("loong-browser-direct-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
