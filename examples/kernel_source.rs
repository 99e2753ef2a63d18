//! Write the CUDA kernel source and the NVRTC options of one specialisation, as the library compiles
//! them, for tools that inspect the machine code without a GPU (bench/gpu/sass.py).
//!
//! Usage: kernel_source --d 128 --bk 4 --bv 4 --arch sm_90 --out DIR
//! writes DIR/kernels.cu and DIR/options.txt (one option per line).

use turboquant::backend::cuda::compile::{self, Variant};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut d, mut bk, mut bv, mut arch, mut out) = (128usize, 4u32, 4u32, "sm_90".to_string(), None);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| die(&format!("{flag} needs a value")));
        let num = |v: &str| v.parse::<usize>().unwrap_or_else(|_| die(&format!("{flag} {v}: not a number")));
        match flag.as_str() {
            "--d" => d = num(&value),
            "--bk" => bk = num(&value) as u32,
            "--bv" => bv = num(&value) as u32,
            "--arch" => arch = value,
            "--out" => out = Some(std::path::PathBuf::from(value)),
            _ => die(&format!("unknown option {flag}")),
        }
    }
    let out = out.unwrap_or_else(|| die("--out DIR is required"));
    let variant = Variant { head_dim: d, bits_k: bk, bits_v: bv };
    variant.check().unwrap_or_else(|e| die(&e));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
    let options: Vec<String> = compile::options(variant, &arch);
    let write = |name: &str, text: String| {
        std::fs::write(out.join(name), text).unwrap_or_else(|e| die(&format!("{name}: {e}")));
    };
    write("kernels.cu", compile::kernel_source());
    write("options.txt", options.join("\n") + "\n");
}

fn die(msg: &str) -> ! {
    eprintln!("kernel_source: {msg}");
    std::process::exit(2);
}
